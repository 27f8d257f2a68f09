"""The guard: our faults are logged once and swallowed; the host program never sees them."""

from __future__ import annotations

import logging
import os

import pytest

from otel_perf import _safety


@pytest.fixture
def swallow() -> object:
    previous = _safety.set_raise_internal_errors(False)
    yield
    _safety.set_raise_internal_errors(previous)


def test_guard_logs_once_and_returns_default(swallow: object, caplog: pytest.LogCaptureFixture) -> None:
    @_safety.guard(default=-1)
    def broken() -> int:
        raise RuntimeError("boom")

    with caplog.at_level(logging.WARNING, logger="otel_perf"):
        assert broken() == -1
        assert broken() == -1
    assert caplog.text.count("otel-perf internal error") == 1
    assert "RuntimeError: boom" in caplog.text


def test_guarded_block_swallows(swallow: object, caplog: pytest.LogCaptureFixture) -> None:
    with _safety.guarded("test block"):
        raise KeyError("x")
    assert "test block" in caplog.text


def test_guard_reraises_under_tests() -> None:
    @_safety.guard
    def broken() -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        broken()


def test_log_once() -> None:
    assert _safety.log_once("k", "message") is True
    assert _safety.log_once("k", "message") is False


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_fork_while_the_log_once_lock_is_held_does_not_deadlock_the_child() -> None:
    """The child of a fork taken while another thread was inside log_once logs its own first message."""
    from tests.helpers.forking import fork_while_held

    assert fork_while_held(_safety._logged_lock, lambda: _safety.log_once("after-fork", "child")) == "ok"
