"""The guard: an internal fault is logged once and swallowed, never raised into the host program.

Why this module exists: otel-perf runs inside other people's programs, on their hot paths and inside
the launcher's start-up. A bug of ours must cost at most a missing measurement, never the program.
Every piece of our own code that runs around user code goes through :func:`guard` or :func:`guarded`;
user exceptions are never caught here (wrappers re-raise them untouched).

Under otel-perf's own test suite (an autouse fixture in ``tests/conftest.py`` switches it on with
:func:`set_raise_internal_errors`), faults are re-raised so tests see them, except in the tests of the
swallow itself.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Final, ParamSpec, TypeVar

__all__ = ["guard", "guarded", "log_once", "raise_internal_errors", "set_raise_internal_errors"]

logger: Final = logging.getLogger("otel_perf")

_P = ParamSpec("_P")
_R = TypeVar("_R")

_raise_internal_errors = False
_logged: set[Any] = set()
_logged_lock = threading.Lock()


def set_raise_internal_errors(value: bool) -> bool:
    """Re-raise internal faults instead of swallowing them (tests only). Returns the previous value."""
    global _raise_internal_errors
    previous, _raise_internal_errors = _raise_internal_errors, value
    return previous


def raise_internal_errors() -> bool:
    """Whether internal faults are re-raised (under otel-perf's tests)."""
    return _raise_internal_errors


def log_once(key: Any, message: str, *args: Any, level: int = logging.WARNING, exc_info: bool = False) -> bool:
    """Log ``message`` on the ``otel_perf`` logger the first time ``key`` is seen. Returns True if logged."""
    with _logged_lock:
        if key in _logged:
            return False
        _logged.add(key)
    logger.log(level, message, *args, exc_info=exc_info)
    return True


def _report(where: str, exc: BaseException) -> None:
    log_once(
        ("fault", where, type(exc).__name__),
        "otel-perf internal error in %s (%s: %s); the program continues, this measurement is skipped. "
        "Further errors of this kind are not logged.",
        where, type(exc).__name__, exc, exc_info=True,
    )


def guard(
    func: Callable[_P, _R] | None = None, *, default: Any = None, where: str | None = None
) -> Any:
    """Decorate our own function so that an exception inside it is logged once and ``default`` returned.

    Usage::

        @guard
        def _collect_cpu(...): ...

        @guard(default=())
        def _observe(options): ...
    """

    def decorate(fn: Callable[_P, _R]) -> Callable[_P, _R]:
        name = where or f"{fn.__module__}.{fn.__qualname__}"

        @functools.wraps(fn)
        def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                if _raise_internal_errors:
                    raise
                _report(name, exc)
                return default  # type: ignore[no-any-return]

        return wrapper

    if func is not None:
        return decorate(func)
    return decorate


@contextmanager
def guarded(where: str) -> Iterator[None]:
    """Run a block of our own code; an exception inside it is logged once and swallowed."""
    try:
        yield
    except Exception as exc:
        if _raise_internal_errors:
            raise
        _report(where, exc)


def _reset_for_tests() -> None:
    with _logged_lock:
        _logged.clear()


def _replace_lock_after_fork() -> None:
    # A forked child has only the thread that forked: a lock another thread held at that moment is never
    # released there, and the child's first log_once (from its first collection, say) would wait forever.
    global _logged_lock
    _logged_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_replace_lock_after_fork)
