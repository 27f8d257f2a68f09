"""Living next to contrib's threading instrumentation, which wraps ``ThreadPoolExecutor.submit`` too.

Why this module exists: under ``opentelemetry-instrument`` with ``opentelemetry-instrumentation-threading``
installed, contrib's wrapper is often outside ours and hands the pool a closure (``wrapped_func``) that
enters the submitter's context and then calls the user's function. Run as the job, it would name every job
``wrapped_func`` and enter the submitter's context again inside the job, after the job's span was made
current, so the user's spans would become siblings of the job's span. The job already runs in a copy of
the submitter's context, so the closure is looked through (:func:`job_target`).
"""

from __future__ import annotations

from typing import Any

__all__ = ["find_contrib_wrapper", "job_target"]

#: The code object of the closure contrib's threading instrumentation submits in place of a job (it wraps
#: ``ThreadPoolExecutor.submit`` too): ``wrapped_func``, which enters the submitter's context and calls
#: ``original_func``. Found when that module is imported (:func:`find_contrib_wrapper`); None before.
_contrib_wrapper: Any = None


def find_contrib_wrapper(module: Any) -> None:
    """Find the code of contrib's submit closure in its ``opentelemetry.instrumentation.threading`` module."""
    global _contrib_wrapper
    instrumentor = getattr(module, "ThreadingInstrumentor", None)
    for attribute in vars(instrumentor).values() if instrumentor is not None else ():
        function = getattr(attribute, "__func__", attribute)
        code = getattr(function, "__code__", None)
        if code is None or "submit" not in code.co_name:
            continue
        for const in code.co_consts:
            if getattr(const, "co_name", None) == "wrapped_func" and "original_func" in const.co_freevars:
                _contrib_wrapper = const
                return


def job_target(fn: Any) -> Any:
    """The function a thread job runs, seen through contrib's submit closure (:data:`_contrib_wrapper`).

    When contrib's wrapper is outside ours it hands the pool its closure, which would enter the
    submitter's context inside the job, after the job's span was made current: the user's spans would
    become siblings of the job's span. The job already runs in a copy of the submitter's context, so the
    closure is unwrapped: the job runs the user's function, named after it, under its own span.
    """
    wrapper: Any = _contrib_wrapper
    if wrapper is None or getattr(fn, "__code__", None) is not wrapper:
        return fn
    free: tuple[str, ...] = _contrib_wrapper.co_freevars
    try:
        inner = fn.__closure__[free.index("original_func")].cell_contents
    except (IndexError, ValueError, TypeError):  # an empty cell, or not the closure we know
        return fn
    return inner if callable(inner) else fn
