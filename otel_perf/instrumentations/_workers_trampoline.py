"""Running one job of a process pool: the trampoline a worker runs instead of the user's function.

Why this module exists: a process job must run in the context that submitted it and get its span in the
worker, and its wait and run time must be logged by the process that owns the pool (DESIGN.md, "Worker
pools" and "Processes"). A process pool runs :func:`trampoline`: a module-level function (a wrapped
callable would not pickle) given the user's function and a small tuple of primitives
(``_workers_carrier.Info``): a W3C ``traceparent`` carrier, the submission time and, only when the job
needs them, the pool's name and kind for its span. In the worker the trampoline runs the job under the
carried context and ends its span (``_workers_bootstrap``); its timings go back inside its result
(``_workers_pickle``). With spans off (and no per-job flush) the job carries six small values and the
worker only enters the carried context (benchmark group ``workers.process.roundtrip.paired``).

A ``ProcessPoolExecutor`` job crosses the pipe compact: while instrumented, the owner's ``ForkingPickler``
reduces the call item of a job of ours to ``_call_item(...)``, one pickled global reference and a tuple,
where the stdlib's item pickles a class reference and a state dictionary and ours would add
``trampoline`` to them. It unpickles into the very item the stdlib sends. With the compact result items
(``_workers_pickle``) this took the instrumented no-op round trip from about 1.09x its bare twin to about
1.01-1.03x.
"""

from __future__ import annotations

import functools
import itertools
import operator
import pickle
from collections.abc import Callable, Iterator
from time import perf_counter
from time import time as wall_clock
from typing import Any

from opentelemetry.trace import Span

from otel_perf._context import attach, detach, get_current
from otel_perf._process import current_handle
from otel_perf.instrumentations import _workers_bootstrap, _workers_carrier, _workers_pickle
from otel_perf.instrumentations._workers_bootstrap import (
    FLUSH_ALL,
    enter_worker_job,
    leave_worker_job,
    worker_slow_span,
)
from otel_perf.instrumentations._workers_carrier import (
    EXTRA_SLOW,
    INFO_CARRIER,
    INFO_CHUNKED,
    INFO_EXTRA,
    INFO_OWNER,
    INFO_POOL,
    INFO_SUBMITTED,
    Info,
    carrier_of,
    context_from,
)
from otel_perf.instrumentations._workers_pickle import (
    ChunkEnvelope,
    Envelope,
    deliver,
    deliver_chunk,
    reduce_result_item,
    tag_exception,
)
from otel_perf.instrumentations._workers_sources import SOURCE_MP
from otel_perf.instrumentations._workers_state import PoolState, error_type, fault, runtime

__all__ = ["chunk_job", "chunk_trampoline", "compact_call_items", "is_process_job", "job_info", "process_job",
           "snapshot", "trampoline"]

_snapshot_cache: tuple[Any, bytes] | None = None


def snapshot(handle: Any) -> bytes | None:
    """The pickled configuration snapshot of ``handle``, this process's ``configure()``."""
    global _snapshot_cache
    if handle._stopped:
        return None
    cached = _snapshot_cache
    if cached is not None and cached[0] is handle:
        return cached[1]
    data = pickle.dumps(handle.snapshot())
    _snapshot_cache = (handle, data)
    return data


def job_info(state: PoolState, chunked: bool = False, flush: bool | None = None) -> Info:
    """What a process job submitted now, in the current context, to the pool of ``state`` carries.

    Args:
        state: the pool's state.
        chunked: the job may run as one item of a chunk (``map``, ``multiprocessing.pool``, a joblib
            batch), whose results leave the worker together (see ``_workers_pickle._unsent``); a
            ``ProcessPoolExecutor.submit`` job never does.
        flush: flush what the job recorded before its result leaves the worker; default: for
            ``multiprocessing.pool`` jobs.
    """
    # multiprocessing.pool workers are killed (SIGTERM) by Pool.terminate() and `with Pool()`: they flush
    # after each job that recorded something. ProcessPoolExecutor workers always end gracefully (also with
    # max_tasks_per_child): they flush once, when they exit. joblib kills its workers too (a failed task
    # aborts the call): the last task of each of its batches flushes (_workers_joblib).
    spans = runtime.spans
    slow = runtime.slow
    config = None
    if state.snapshot_per_job:
        handle = current_handle()
        config = snapshot(handle) if handle is not None else None
    if flush is None:
        flush = state.source == SOURCE_MP
    # Laid out as _workers_carrier.Extra and .Info.
    extra = ((state.name, state.kind, spans, config, flush, slow)
             if spans or flush or config is not None or slow is not None else None)
    ctx = get_current()
    last = _workers_carrier.last_carrier
    return (_workers_carrier.my_pid, state.id, wall_clock(), last[1] if last[0] is ctx else carrier_of(ctx),
            extra, chunked)


def trampoline(fn: Callable[..., Any], info: Info, /, *args: Any, **kwargs: Any) -> Any:
    """What a process pool runs instead of the user's function (module level: it pickles by name)."""
    owner = info[INFO_OWNER]
    if _workers_carrier.my_pid == owner:  # called in the owning process itself: nothing to carry back
        return fn(*args, **kwargs)
    wait = wall_clock() - info[INFO_SUBMITTED]
    if wait < 0.0:
        wait = 0.0
    start = perf_counter()
    span: Span | None = None
    token: Any = None
    ends: tuple[int, int] | None = None
    if info[INFO_EXTRA] is None and _workers_bootstrap.worker_pid == _workers_carrier.my_pid:
        # The spans-off path of a set-up worker: no span, nothing to count for a flush; only the
        # submitter's context to enter, if it had one.
        carrier = info[INFO_CARRIER]
        if carrier is not None:
            try:
                last = _workers_carrier.last_context
                token = attach(last[1] if last[0] == carrier else context_from(carrier))  # type: ignore[arg-type]
            except Exception as exc:
                fault("pool job start in a worker process", exc)
    else:
        span, token, ends = enter_worker_job(fn, info, wait)
    try:
        result = fn(*args, **kwargs)
    except BaseException as exc:
        run = perf_counter() - start
        etype = error_type(exc)
        if ends is None and info[INFO_CHUNKED]:
            # A failing item ends its chunk or batch, and joblib then kills its workers: flush now.
            ends = FLUSH_ALL
        if span is None and info[INFO_EXTRA] is not None:
            worker_slow_span(fn, info, wait, run, exc, etype)  # slow mode: every failed job
        leave_worker_job(span, token, ends, exc, etype)
        tag_exception(exc, (owner, info[INFO_POOL], (wait, run, etype)))
        raise
    run = perf_counter() - start
    extra = info[INFO_EXTRA]
    if span is None and extra is not None and extra[EXTRA_SLOW] is not None and run >= extra[EXTRA_SLOW]:
        worker_slow_span(fn, info, wait, run, None, None)
    if span is not None or ends is not None:
        leave_worker_job(span, token, ends, None, None)
    elif token is not None:
        try:
            detach(token)
        except Exception as exc:
            fault("pool job end in a worker process", exc)
    if info[INFO_CHUNKED]:
        return ChunkEnvelope(result, (owner, info[INFO_POOL], (wait, run)))
    compact = _workers_pickle.compact_results
    if compact is not None:  # this result's item goes back compact (_workers_pickle.reduce_result_item)
        compact[0].setdefault(compact[1], reduce_result_item)
    return Envelope((deliver, (result, owner, info[INFO_POOL], (wait, run))))


# --- the call item of a ProcessPoolExecutor job, compact ----------------------------------------------

#: ``concurrent.futures.process._CallItem`` in this process, once a compact item was unpickled here.
_call_item_type: Any = None


def _call_item(work_id: int, fn: Callable[..., Any], info: Info, args: tuple[Any, ...],
               kwargs: dict[str, Any]) -> Any:
    """In a worker process, unpickling a compact call item: the item the pool sends, with the job running
    through the trampoline."""
    global _call_item_type
    item_type = _call_item_type
    if item_type is None:
        from concurrent.futures.process import _CallItem as item_type

        _call_item_type = item_type
    return item_type(work_id, trampoline, (fn, info, *args), kwargs)


def _reduce_call_item(item: Any) -> Any:
    """``ForkingPickler``'s reduction of a ``ProcessPoolExecutor`` call item, in the pool's owner.

    A job of ours goes as ``_call_item(work id, fn, info, args, kwargs)``: one pickled global (this
    module's ``_call_item``) instead of two (the ``_CallItem`` class and ``trampoline``) and no state
    dictionary, about 1 µs less per job, in the feeder thread and in the worker, than the default
    (benchmark group ``workers.process.roundtrip.paired``). Any other item gets the default reduction.
    """
    try:
        args = item.args
        if item.fn is trampoline and len(args) >= 2:
            return (_call_item, (item.work_id, args[0], args[1], args[2:], item.kwargs))
    except Exception as exc:
        fault("pickling a pool job", exc)
    return item.__reduce_ex__(pickle.DEFAULT_PROTOCOL)


def compact_call_items(on: bool) -> None:
    """Register (``on``) or remove :func:`_reduce_call_item` for ``_CallItem`` with ``ForkingPickler``,
    which pickles what a ``ProcessPoolExecutor`` sends its workers. Call it only once
    ``concurrent.futures.process`` is imported. A reducer someone else registered is left alone."""
    from concurrent.futures.process import _CallItem
    from multiprocessing.reduction import ForkingPickler

    reducers = ForkingPickler._extra_reducers  # type: ignore[attr-defined]  # what register() writes to
    if on:
        if _CallItem not in reducers:
            ForkingPickler.register(_CallItem, _reduce_call_item)
    elif reducers.get(_CallItem) is _reduce_call_item:
        del reducers[_CallItem]


def process_job(state: PoolState, fn: Callable[..., Any], flush: bool | None = None) -> functools.partial[Any]:
    """``fn`` as one callable for APIs that take a single function (``map``, ``apply_async``); ``flush``
    as for :func:`job_info`."""
    return functools.partial(trampoline, fn, job_info(state, chunked=True, flush=flush))


def chunk_job(state: PoolState, star: bool) -> functools.partial[Any]:
    """The mapper of a ``multiprocessing`` pool's ``map`` (``mapstar``, or ``starmapstar`` when ``star``)
    as one job per chunk: the chunk is timed as one, and each of its items is logged with the chunk's wait
    and an equal share of its run time (:func:`chunk_trampoline`).

    For a ``Pool.map`` of small items, per-item bookkeeping costs many times the item itself (10 000
    items of about 1.2 µs each took 24x as long with a trampoline per item, spans off; benchmark group
    ``workers.saturated.pool_map``). Job counts and sums stay exact; a chunk's items share one bucket.
    Used with spans off, and in slow mode, where the items are timed one by one in Python
    (:func:`_timed_items`) for the spans of the slow ones.
    """
    return functools.partial(chunk_trampoline, star, job_info(state, chunked=False))


def chunk_trampoline(star: bool, info: Info, task: tuple[Callable[..., Any], tuple[Any, ...]], /) -> Any:
    """What a ``multiprocessing`` pool runs for one chunk of a ``map`` (module level: it pickles by
    name): ``mapstar``/``starmapstar``, timed, the result wrapped in an envelope for the owner."""
    fn, items = task
    remaining = iter(items)
    owner = info[INFO_OWNER]
    if _workers_carrier.my_pid == owner:  # called in the owning process itself: nothing to carry back
        return list(itertools.starmap(fn, remaining) if star else map(fn, remaining))
    wait = wall_clock() - info[INFO_SUBMITTED]
    if wait < 0.0:
        wait = 0.0
    start = perf_counter()
    span, token, ends = enter_worker_job(fn, info, wait)
    extra = info[INFO_EXTRA]
    slow = extra[EXTRA_SLOW] if extra is not None else None
    try:
        if slow is None:
            result = list(itertools.starmap(fn, remaining) if star else map(fn, remaining))
        else:
            result = _timed_items(fn, remaining, star, slow, info, wait)
    except BaseException as exc:
        run = perf_counter() - start
        ran = len(items) - operator.length_hint(remaining)  # the failing item included
        each = run / ran if ran > 0 else run
        etype = error_type(exc)
        # A failing item ends its chunk; the pool may then be terminated: flush now.
        leave_worker_job(span, token, FLUSH_ALL if ends is None else ends, exc, etype)
        pool_id = info[INFO_POOL]
        tag_exception(exc, (owner, pool_id, (wait, each, etype)), [(owner, pool_id, (wait, each))] * (ran - 1))
        raise
    run = perf_counter() - start
    if span is not None or ends is not None or token is not None:
        leave_worker_job(span, token, ends, None, None)
    items_run = len(items)
    return Envelope((deliver_chunk, (result, owner, info[INFO_POOL], wait, run / items_run, items_run)))


def _timed_items(fn: Callable[..., Any], remaining: Iterator[Any], star: bool, slow: float, info: Info,
                 wait: float) -> list[Any]:
    """A chunk's items one by one, each timed, in slow mode: a span for each item at least ``slow``
    seconds long or failed (about 0.3 µs an item more than the chunk's own C loop)."""
    result: list[Any] = []
    append = result.append
    for item in remaining:
        began = perf_counter()
        try:
            value = fn(*item) if star else fn(item)
        except BaseException as exc:
            worker_slow_span(fn, info, wait, perf_counter() - began, exc, error_type(exc))
            raise
        run = perf_counter() - began
        if run >= slow:
            worker_slow_span(fn, info, wait, run, None, None)
        append(value)
    return result


def is_process_job(fn: Any) -> bool:
    return isinstance(fn, functools.partial) and fn.func is trampoline
