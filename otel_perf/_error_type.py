"""``error.type`` of an exception: one spelling for every signal otel-perf records.

Why this module exists: a dashboard joins pool jobs, tool calls, parses and program runs on ``error.type``,
so the same exception must carry the same label everywhere. The semantic conventions' rule for exceptions
is the fully qualified class name (``json.decoder.JSONDecodeError``, ``myapp.errors.ToolError``); classes of
``builtins`` keep their bare name (``ValueError``), as the conventions' own examples and Python's
tracebacks print them. Every instrumentation calls :func:`error_type_of`.
"""

from __future__ import annotations

__all__ = ["error_type_of"]

#: exception class -> its error.type, for the first classes seen (bounded: a program that makes classes
#: at run time must not grow this without end; the name of any later class is worked out each time).
_names: dict[type, str] = {}
_MAX_CACHED = 1000


def error_type_of(exc: BaseException) -> str:
    """The ``error.type`` of ``exc``: its class's fully qualified name (builtins unqualified).

    Args:
        exc: the exception raised.

    Returns:
        ``"ValueError"`` for a builtin, ``"<module>.<qualified class name>"`` for any other class.
    """
    cls = type(exc)
    found = _names.get(cls)
    if found is None:
        module = getattr(cls, "__module__", None)
        qualname = getattr(cls, "__qualname__", None) or cls.__name__
        found = qualname if not isinstance(module, str) or module == "builtins" else f"{module}.{qualname}"
        if len(_names) < _MAX_CACHED:
            _names[cls] = found
    return found
