"""Shared test set-up: internal faults re-raise, telemetry files land in temporary directories (a run that
leaves files in the repository fails), and helpers for tests that need real binaries."""

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


# Directories of the repository a test run may write to (caches, virtualenvs, build metadata).
_SCRATCH_DIRS = {".git", ".venv", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".benchmarks"}


_FILES_BEFORE = pytest.StashKey[set[str]]()


def _repository_files() -> set[str]:
    found: set[str] = set()
    for directory, subdirectories, files in os.walk(ROOT):
        subdirectories[:] = [d for d in subdirectories if d not in _SCRATCH_DIRS
                             and not d.startswith(".ci-venv") and not d.endswith(".egg-info")]
        found.update(os.path.relpath(os.path.join(directory, name), ROOT) for name in files)
    return found


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_FILES_BEFORE] = _repository_files()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run when a test left files in the repository (tests write under temporary directories)."""
    before = session.config.stash.get(_FILES_BEFORE, None)
    if before is None:
        return
    left = sorted(_repository_files() - before)
    if left:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        message = "tests left files in the repository (write under tmp_path instead): " + ", ".join(left[:20])
        if reporter is not None:
            reporter.write_line(message, red=True)
        else:
            print(message, file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session", autouse=True)
def _telemetry_files_under_tmp(tmp_path_factory: pytest.TempPathFactory) -> None:
    """otel-perf's default file output (``./otel-perf-data``) goes to this session's temporary directory:
    also for what a provider left by an earlier test exports from a forked child, or at exit. Left set
    at the end on purpose: the process's own exit-time exports come after the session."""
    os.environ["OTEL_PERF_OUTPUT_DIR"] = str(tmp_path_factory.mktemp("otel-perf-data"))


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
