"""joblib: one pool job per task, named after the task's function, in the context of the ``Parallel`` call.

Why this module exists: joblib, the most used way to run pools in data and ML code, hands its pools
*batches*: a ``BatchedCalls`` holding several ``(function, args, kwargs)`` tasks, wrapped for thread and
``multiprocessing`` pools in a ``_TracebackCapturingWrapper``. Seen as pool jobs, every batch would be one
job named ``_TracebackCapturingWrapper`` and its tasks would be invisible. So a batch submitted to an
instrumented pool has each of its tasks wrapped as a job of that pool (the wrapper the pool would give a
single job: :func:`~otel_perf.instrumentations._workers_thread.local_job` for threads,
:func:`~otel_perf.instrumentations._workers_trampoline.process_job` for processes, whose results travel back with
the batch's list of results as the items of a ``map`` chunk do), and the batch itself is submitted bare.

joblib dispatches most batches from callbacks, in the pool's result thread, not in the thread that called
``Parallel``; the trace context of the call is kept on the ``Parallel`` object when it is called and
entered around each dispatch (``Parallel.__call__`` and ``Parallel._dispatch`` are patched), so every task
is a child of the span that called ``Parallel``.

Nothing here runs, or costs anything, until joblib is imported.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

from otel_perf._context import attach, detach, get_current

__all__ = ["batch_of", "expand_batch", "parallel_call", "parallel_dispatch"]

_CONTEXT_ATTR = "_otel_perf_context"


def batch_of(fn: Any) -> Any:
    """The joblib ``BatchedCalls`` that ``fn`` runs (itself, or inside joblib's traceback-capturing
    wrapper), or None when ``fn`` is anything else (or joblib is not imported)."""
    parallel = sys.modules.get("joblib.parallel")
    if parallel is None:
        return None
    batch_type = getattr(parallel, "BatchedCalls", None)
    if batch_type is None:
        return None
    target = fn
    if type(target).__name__ == "_TracebackCapturingWrapper":
        target = getattr(target, "func", None)
    if isinstance(target, batch_type) and isinstance(getattr(target, "items", None), list):
        return target
    return None


def expand_batch(batch: Any, wrap: Callable[[Callable[..., Any], bool], Callable[..., Any]]) -> int:
    """Make each task of ``batch`` a pool job: its function becomes ``wrap(function, last)``, ``last``
    true for the batch's last task (a worker process flushes after it: the batch's results leave together,
    and joblib kills its workers when a call fails or ends).

    Returns:
        The number of tasks.
    """
    items = batch.items
    last = len(items) - 1
    batch.items = [(wrap(func, i == last), args, kwargs) for i, (func, args, kwargs) in enumerate(items)]
    return len(items)


def parallel_call(original: Callable[..., Any]) -> Callable[..., Any]:
    """``Parallel.__call__``: remember the caller's context for the dispatches of this call."""

    @functools.wraps(original)
    def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            self.__dict__[_CONTEXT_ATTR] = get_current()
        except Exception:  # no instance dictionary: dispatches keep the context they run in
            pass
        return original(self, *args, **kwargs)

    return __call__


def parallel_dispatch(original: Callable[..., Any]) -> Callable[..., Any]:
    """``Parallel._dispatch``: dispatch in the context of the ``Parallel`` call (see the module docstring)."""

    @functools.wraps(original)
    def _dispatch(self: Any, *args: Any, **kwargs: Any) -> Any:
        context = self.__dict__.get(_CONTEXT_ATTR) if hasattr(self, "__dict__") else None
        if context is None or context is get_current():
            return original(self, *args, **kwargs)
        token = attach(context)
        try:
            return original(self, *args, **kwargs)
        finally:
            try:
                detach(token)
            except Exception:  # a token of another context: the API would log and carry on
                pass

    return _dispatch
