"""Shared test set-up: internal faults re-raise, and helpers for tests that need real binaries."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from otel_perf import _config, _safety

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
BIN = Path(sys.executable).parent


@pytest.fixture(autouse=True)
def _otel_perf_test_mode() -> Iterator[None]:
    """otel-perf's guard re-raises under its own tests; settings and log-once state start fresh."""
    previous = _safety.set_raise_internal_errors(True)
    _safety._reset_for_tests()
    _config._reset_for_tests()
    yield
    _safety.set_raise_internal_errors(previous)
    _config._reset_for_tests()


def require_binary(command: str, package: str) -> str:
    """The path of ``command``; skip naming the Debian ``package`` when missing (fail when CI is set)."""
    found = shutil.which(command)
    if found:
        return found
    message = f"{command} not found: install the Debian package {package} (make test does, as root)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for a child process: this one without OTEL_* and OTEL_PERF_* settings."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OTEL_", "TRACEPARENT", "TRACESTATE", "BAGGAGE"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env
