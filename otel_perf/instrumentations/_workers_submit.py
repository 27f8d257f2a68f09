"""The patched submission methods of ``concurrent.futures`` and ``multiprocessing.pool`` pools.

Why this module exists: every job reaches a pool through one of a few methods (``submit``, ``map``,
``apply_async``, ``_map_async``, ``imap``); each patched method here finds the pool's state, makes the job
run through otel-perf (``_workers_thread.run_thread_job`` on a thread, ``_workers_trampoline.trampoline``
in a worker process) and passes it on to the pool's own method. ``workers.py`` installs them
(``WorkerPoolInstrumentor``).

Thread pools use plain closures, not wrapt, on ``submit``: ``benchmarks/instrumentations/test_workers.py``
(group ``workers.thread.roundtrip``): wrapt costs about 1 µs a call, a large share of the budget there.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterable, Iterator
from contextvars import copy_context
from time import perf_counter
from types import FunctionType
from typing import Any

from otel_perf._context import SUPPRESSION_KEYS, get_current_or_suppressed
from otel_perf._safety import guarded
from otel_perf._semconv import POOL_KIND_THREAD
from otel_perf.instrumentations import _workers_contrib
from otel_perf.instrumentations._workers_contrib import job_target
from otel_perf.instrumentations._workers_joblib import batch_of, expand_batch
from otel_perf.instrumentations._workers_setup import SET_UP, set_up_workers
from otel_perf.instrumentations._workers_sources import SOURCE_MP, SOURCE_MP_THREAD
from otel_perf.instrumentations._workers_state import PoolState, runtime, state_for
from otel_perf.instrumentations._workers_thread import local_job, run_thread_job
from otel_perf.instrumentations._workers_trampoline import (
    chunk_job,
    compact_call_items,
    is_process_job,
    job_info,
    process_job,
    trampoline,
)

__all__ = ["FUTURE_MARK", "future_cancel", "mp_apply_async", "mp_imap", "mp_map_async", "mp_repopulate",
           "process_map", "process_submit", "suppressed", "thread_submit"]

#: The attribute that marks a future of an instrumented pool with the pool's state (for ``cancel``). Set as
#: a plain attribute: ``future.__dict__[...]`` would make CPython build the instance's dictionary, about
#: 0.25 µs a job here, and slow every later attribute access of the future in the standard library.
FUTURE_MARK = "_otel_perf_pool"
#: The context keys of ``suppress_instrumentation()``, read from the current context directly (one C call and
#: dictionary lookups on the submit path, benchmark group ``workers.thread.roundtrip.paired``), with the
#: checked binding and public fallback of ``otel_perf._context``.
_SUPPRESSED, _SUPPRESSED_PLAIN = SUPPRESSION_KEYS


def suppressed() -> bool:
    current = get_current_or_suppressed()
    return bool(current.get(_SUPPRESSED) or current.get(_SUPPRESSED_PLAIN))


def _submission_state(pool: Any) -> PoolState | None:
    """The state of ``pool`` for a submission now; None when the job goes to the pool bare (instrumentation
    off or suppressed, or one of OpenTelemetry's own pools). ``thread_submit`` has these lines inline: a
    thread-pool job is cheap enough for one more Python call to show (``workers.saturated.thread.*``)."""
    if not runtime.active or suppressed():
        return None
    try:
        state: PoolState = pool.__dict__["_otel_perf_pool"]
    except KeyError:
        state = state_for(pool)
    return None if state.ignored else state


# --- concurrent.futures --------------------------------------------------------------------------------


def _callable_original(original: Any) -> Callable[..., Any]:
    """``original(self, ...)`` for the raw class attribute we replaced.

    A plain function is called as is (the hot path). Anything else, such as another instrumentation's
    wrapt wrapper (contrib's threading instrumentation wraps ``submit`` too), must be bound through the
    descriptor protocol first, or it would take ``self`` for the first argument.
    """
    if type(original) is FunctionType:  # not isinstance: a wrapt proxy claims its wrapped class
        return original

    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        return original.__get__(self, type(self))(*args, **kwargs)

    return call



def thread_submit(original: Callable[..., Any]) -> Callable[..., Any]:
    call = _callable_original(original)

    @functools.wraps(original)
    def submit(self: Any, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        # _submission_state, inline (see there).
        if not runtime.active or (current := get_current_or_suppressed()).get(_SUPPRESSED) or current.get(
                _SUPPRESSED_PLAIN):
            return call(self, fn, *args, **kwargs)
        try:
            state = self.__dict__["_otel_perf_pool"]
        except KeyError:
            state = state_for(self)
        if state.ignored:
            return call(self, fn, *args, **kwargs)
        if _workers_contrib._contrib_wrapper is not None:  # contrib's threading instrumentation is imported
            fn = job_target(fn)
        # The job runs as ctx.run(run_thread_job, ...) in a copy of the submitter's context: no extra
        # Python frame or closure per job.
        try:
            future = call(self, copy_context().run, run_thread_job, state, fn, perf_counter(), args,
                              kwargs)
        except BaseException:
            state.record_rejected()
            raise
        future._otel_perf_pool = state  # FUTURE_MARK
        return future

    return submit


def _is_job_chunk(fn: Any) -> bool:
    return isinstance(fn, functools.partial) and bool(fn.args) and is_process_job(fn.args[0])


def _set_up(pool: Any, state: PoolState, context: Any, started: bool) -> None:
    """At a process pool's first instrumented use: set up the worker processes it starts from now on
    (``set_up_workers``: the initializer they start with)."""
    state.ready = True
    with guarded("setting up a process pool's workers"):
        state.snapshot_per_job = set_up_workers(pool, context, started)


def _executor_context(pool: Any) -> Any:
    return getattr(pool, "_mp_context", None) or getattr(pool, "_context", None)  # stdlib, loky


def process_submit(original: Callable[..., Any]) -> Callable[..., Any]:
    """``submit`` of ``ProcessPoolExecutor`` and of loky's executor."""
    call = _callable_original(original)
    stdlib = getattr(original, "__module__", "") == "concurrent.futures.process"
    if stdlib:
        compact_call_items(True)  # concurrent.futures.process is imported: this patch is being applied
    # loky pickles results its own way: its jobs' results go back as chunk items do (_workers_pickle).
    chunked = not stdlib

    @functools.wraps(original)
    def submit(self: Any, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        state = _submission_state(self)
        if state is None:
            return call(self, fn, *args, **kwargs)
        if not state.ready:
            _set_up(self, state, _executor_context(self), bool(self._processes))
        try:
            # ProcessPoolExecutor.map submits partial(_process_chunk, <our job>)
            if isinstance(fn, functools.partial) and _is_job_chunk(fn):
                future = call(self, fn, *args, **kwargs)
            elif (batch := batch_of(fn)) is not None:  # joblib (loky backend): a job per task
                expand_batch(batch, functools.partial(_batch_job, state))
                future = call(self, fn, *args, **kwargs)
            else:
                future = call(self, trampoline, fn, job_info(state, chunked), *args, **kwargs)
        except BaseException:
            state.record_rejected()
            raise
        future._otel_perf_pool = state  # FUTURE_MARK
        return future

    return submit


def process_map(original: Callable[..., Any]) -> Callable[..., Any]:
    call = _callable_original(original)

    @functools.wraps(original)
    def map(self: Any, fn: Callable[..., Any], *iterables: Iterable[Any], **kwargs: Any) -> Any:
        state = _submission_state(self)
        if state is None:
            return call(self, fn, *iterables, **kwargs)
        if not state.ready:
            _set_up(self, state, _executor_context(self), bool(self._processes))
        return call(self, process_job(state, fn), *iterables, **kwargs)

    return map


def future_cancel(original: Callable[..., Any]) -> Callable[..., Any]:
    call = _callable_original(original)

    @functools.wraps(original)
    def cancel(self: Any) -> bool:
        # Read from the instance's own dictionary (cancel is rare): a Future subclass's __getattr__ is
        # never asked for the mark.
        state: PoolState | None = self.__dict__.get(FUTURE_MARK)
        if state is None:
            return bool(call(self))
        pending = self._state == "PENDING"
        cancelled = bool(call(self))
        if cancelled and pending and runtime.active:
            state.record_cancelled()
        return cancelled

    return cancel


# --- multiprocessing.pool ----------------------------------------------------------------------------


def _mp_state(pool: Any) -> PoolState | None:
    """The state of a ``multiprocessing`` pool for a submission now; None when it goes to the pool bare
    (uninstrumented, suppressed, or one of OpenTelemetry's own pools)."""
    state = _submission_state(pool)
    if state is None:
        return None
    if not state.ready:
        if state.source == SOURCE_MP_THREAD:
            state.ready = True
        else:  # set up by _repopulate_pool unless the pool was made before instrumentation
            _set_up(pool, state, getattr(pool, "_ctx", None), True)
    return state


def _job_for(state: PoolState, func: Callable[..., Any]) -> functools.partial[Any]:
    return local_job(state, func) if state.source == SOURCE_MP_THREAD else process_job(state, func)


def _batch_job(state: PoolState, func: Callable[..., Any], last: bool) -> functools.partial[Any]:
    """A task of a joblib batch as a job of the pool of ``state``; a process job flushes after the
    batch's ``last`` task only (``_workers_joblib.expand_batch``)."""
    if state.kind == POOL_KIND_THREAD:
        return local_job(state, func)
    return process_job(state, func, flush=last)


def mp_apply_async(original: Callable[..., Any]) -> Callable[..., Any]:
    call = _callable_original(original)

    @functools.wraps(original)
    def apply_async(self: Any, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        state = _mp_state(self)
        if state is None:
            return call(self, func, *args, **kwargs)
        batch = batch_of(func)
        if batch is not None:  # joblib (threading and multiprocessing backends): a job per task
            count = expand_batch(batch, functools.partial(_batch_job, state))
            job: Callable[..., Any] = func
        else:
            count, job = 1, _job_for(state, func)
        state.add_outstanding(count)
        try:
            return call(self, job, *args, **kwargs)
        except BaseException:
            state.add_outstanding(-count)
            state.record_rejected()
            raise

    return apply_async


def mp_map_async(original: Callable[..., Any]) -> Callable[..., Any]:
    call = _callable_original(original)

    @functools.wraps(original)
    def _map_async(self: Any, func: Callable[..., Any], iterable: Iterable[Any], *args: Any,
                   **kwargs: Any) -> Any:
        state = _mp_state(self)
        if state is None:
            return call(self, func, iterable, *args, **kwargs)
        try:
            self._check_running()
        except ValueError:
            state.record_rejected()
            raise
        # Pool._map_async does the same conversion itself; done here to count the jobs.
        if not hasattr(iterable, "__len__"):
            iterable = list(iterable)
        count = len(iterable)  # type: ignore[arg-type]
        state.add_outstanding(count)
        try:
            star = _chunk_mapper(args[0]) if args and state.source == SOURCE_MP and not runtime.spans else None
            if star is not None:  # one job per chunk (chunk_job), the items timed together
                return call(self, func, iterable, chunk_job(state, star), *args[1:], **kwargs)
            return call(self, _job_for(state, func), iterable, *args, **kwargs)
        except BaseException:
            state.add_outstanding(-count)
            raise

    return _map_async


def _chunk_mapper(mapper: Any) -> bool | None:
    """Whether ``mapper`` (what ``Pool._map_async`` runs per chunk) is ``starmapstar`` (True) or
    ``mapstar`` (False); None for anything else, which keeps a job per item."""
    pool_module = sys.modules.get("multiprocessing.pool")
    if pool_module is None:
        return None
    if mapper is getattr(pool_module, "mapstar", None):
        return False
    if mapper is getattr(pool_module, "starmapstar", None):
        return True
    return None


def _counted(state: PoolState, iterable: Iterable[Any]) -> Iterator[Any]:
    for item in iterable:
        state.add_outstanding(1)
        yield item


def mp_imap(original: Callable[..., Any]) -> Callable[..., Any]:
    call = _callable_original(original)

    @functools.wraps(original)
    def imap(self: Any, func: Callable[..., Any], iterable: Iterable[Any], *args: Any, **kwargs: Any) -> Any:
        state = _mp_state(self)
        if state is None:
            return call(self, func, iterable, *args, **kwargs)
        try:
            self._check_running()
        except ValueError:
            state.record_rejected()
            raise
        return call(self, _job_for(state, func), _counted(state, iterable), *args, **kwargs)

    return imap


def mp_repopulate(original: Callable[..., Any]) -> Callable[..., Any]:
    """``Pool._repopulate_pool``, called by ``Pool.__init__`` to start its workers: set them up first."""
    call = _callable_original(original)

    @functools.wraps(original)
    def _repopulate_pool(self: Any) -> Any:
        if runtime.active and not self.__dict__.get(SET_UP):
            with guarded("setting up a process pool's workers"):
                mp_pool = sys.modules.get("multiprocessing.pool")
                if mp_pool is None or not isinstance(self, mp_pool.ThreadPool):
                    set_up_workers(self, getattr(self, "_ctx", None), False)
        return call(self)

    return _repopulate_pool
