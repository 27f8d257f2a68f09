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
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar, Token
from typing import Any

from opentelemetry import context as _api
from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext

__all__ = ["attach", "detach", "get_current"]


def _bind() -> tuple[Callable[[], _api.Context], Callable[[_api.Context], Token[Any]],
                     Callable[[Token[Any]], None]]:
    runtime = getattr(_api, "_RUNTIME_CONTEXT", None)
    var = getattr(runtime, "_current_context", None)
    if type(runtime) is ContextVarsRuntimeContext and isinstance(var, ContextVar):
        return var.get, var.set, var.reset
    return _api.get_current, _api.attach, _api.detach


get_current, attach, detach = _bind()
