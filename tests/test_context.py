"""otel_perf._context: the current OpenTelemetry context through its ContextVar, interchangeable with the
API's functions."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry import context as otel_context

from otel_perf import _context


def test_enter_and_leave_are_seen_by_the_api() -> None:
    key = otel_context.create_key("otel-perf-test")
    ctx = otel_context.set_value(key, "v")
    token = _context.attach(ctx)
    try:
        assert otel_context.get_current() is ctx
        assert _context.get_current() is ctx
    finally:
        _context.detach(token)
    assert otel_context.get_value(key) is None


def test_a_context_the_api_entered_is_current_here() -> None:
    ctx = otel_context.set_value(otel_context.create_key("otel-perf-test"), 1)
    token = otel_context.attach(ctx)
    try:
        assert _context.get_current() is ctx
    finally:
        otel_context.detach(token)


def test_detach_raises_on_a_token_used_twice() -> None:
    """Unlike the API's detach (which logs), callers guard it."""
    token = _context.attach(otel_context.get_current())
    _context.detach(token)
    with pytest.raises(RuntimeError):
        _context.detach(token)


def test_another_runtime_context_keeps_the_api_functions(monkeypatch: Any) -> None:
    class _Other:
        pass

    monkeypatch.setattr(otel_context, "_RUNTIME_CONTEXT", _Other())
    assert _context._bind() == (otel_context.get_current, otel_context.attach, otel_context.detach)
