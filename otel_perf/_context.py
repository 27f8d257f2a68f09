"""The current OpenTelemetry context: read, entered and left with the fewest Python calls.

Why this module exists: ``opentelemetry.context.get_current``, ``attach`` and ``detach`` are each two
Python calls (the API function, then the runtime context's method) around one C method of a
``ContextVar``. A pool job enters and leaves the submitter's context on the hot path, in a just-woken
thread or worker process where every Python call costs several times its price in a loop (benchmark
group ``workers.process.roundtrip.paired``). On the default runtime context (contextvars) these names
are that ``ContextVar``'s own bound methods; with any other runtime context (``OTEL_PYTHON_CONTEXT``)
they are the API's functions.

``detach`` differs from the API's in one way: it raises where the API logs and carries on (a token
from another context, or reset twice), so callers guard it.

``SUPPRESSION_KEYS`` are the context keys ``suppress_instrumentation()`` sets (the SDK's exporters set the
first): a hot path reads ``get_current()`` and looks both up, where the public
``is_instrumentation_enabled()`` costs four Python calls more. When the private keys are not where this
otel-perf expects them, ``get_current`` and the keys become the public check's (one log line). Both
private bindings, and their checks, live in ``otel_perf._sdk_internals``.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import Token
from typing import Any

from opentelemetry import context as _api

from otel_perf._sdk_internals import context_var_methods, suppression_keys

__all__ = ["SUPPRESSION_KEYS", "attach", "detach", "get_current", "get_current_or_suppressed"]


def _bind() -> tuple[Callable[[], _api.Context], Callable[[_api.Context], Token[Any]],
                     Callable[[Token[Any]], None]]:
    methods = context_var_methods()
    if methods is not None:
        return methods
    return _api.get_current, _api.attach, _api.detach


get_current, attach, detach = _bind()


_SUPPRESSED = "otel_perf.suppressed"


def _public_check() -> Any:
    """A context stand-in for the public check: ``{_SUPPRESSED: True}`` while instrumentation is suppressed."""
    from opentelemetry.instrumentation.utils import is_instrumentation_enabled

    suppressed: dict[str, bool] = {_SUPPRESSED: True}
    enabled: dict[str, bool] = {}
    return lambda: enabled if is_instrumentation_enabled() else suppressed


def _bind_suppression() -> tuple[Callable[[], Any], tuple[str, str]]:
    keys = suppression_keys()
    if keys is None:
        return _public_check(), (_SUPPRESSED, _SUPPRESSED)
    return get_current, keys


#: ``get_current_or_suppressed().get(key)`` is truthy for one of ``SUPPRESSION_KEYS`` while
#: ``suppress_instrumentation()`` is in force (``get_current`` itself when the keys were found).
get_current_or_suppressed, SUPPRESSION_KEYS = _bind_suppression()
