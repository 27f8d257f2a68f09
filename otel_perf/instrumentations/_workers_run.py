"""Running one pool job: in a thread of the owning process, or in a worker process through a trampoline.

Why this module exists: a job must run in the context that submitted it, get its span, and have its wait
and run time recorded by the process that owns the pool (DESIGN.md, "Worker pools" and "Processes").

* Thread pools run :func:`run_thread_job` inside a copy of the submitter's ``contextvars`` context, so
  the span's parent is the submitter's span however often the pool's threads are reused.
* Process pools run :func:`trampoline`: a module-level function (a wrapped callable would not pickle)
  given the user's function and a small tuple of primitives (:data:`Info`): a W3C ``traceparent``
  carrier, the submission time and, only when the job needs them, the pool's name and kind for its span.
  In the worker the trampoline runs the job under the carried context and ends its span. With spans off
  (and no per-job flush) the job carries six small values and the worker only enters the carried context
  (benchmark group ``workers.process.roundtrip.paired``).
* Each worker process is set up once, when it starts (``_workers_setup``): :func:`_ensure_worker_sdk`
  registers the flush at exit and, for a ``configure()``d parent's spawn, forkserver or loky worker,
  configures the SDK from a pickled :class:`~otel_perf._sdk.ConfigSnapshot` (about 1.1 KB, OTLP headers
  included) that travels once per worker process, with the process's start-up arguments, instead of with
  every job. Only a pool whose workers were already running when otel-perf first saw it sends the
  snapshot with its jobs.
* Nothing recorded in a job may be lost when its worker ends. Fork and forkserver workers end with
  ``os._exit`` (no ``atexit``), and ``with multiprocessing.Pool()`` terminates its workers (SIGTERM) as
  soon as the block ends. Flushing after every job costs one synchronous export per job that recorded
  something (about 1.1 ms with OTLP/gRPC here, against a 63 µs round trip), so ``ProcessPoolExecutor``
  workers, which always end gracefully, flush once when they exit (a ``multiprocessing`` finalizer runs
  even before ``os._exit``). That exit flush also exports the worker's metrics, so its runtime metrics
  (``process.uptime``, CPU, memory) cover its whole life, not only up to its last periodic export.
  ``multiprocessing.pool`` workers can be terminated at any moment, so they flush after each job that
  recorded a span or log record, before its result leaves (a worker that ends gracefully, after
  ``close()`` or ``maxtasksperchild``, also flushes its metrics at exit). Flushing on the
  SIGTERM instead was tried and rejected: a Python signal handler runs only in the main thread, and when
  the kernel hands the signal to another thread of a worker blocked on the pool's queue lock, the worker
  never dies and ``terminate()`` waits forever (seen on 3.13, about 1 run in 20).
* The job's timings travel back with its outcome without changing what the pool delivers: the result is
  wrapped in an :class:`_Envelope` whose ``__reduce__`` unpickles, in the owner, into the user's own
  value (recording the timings as a side effect); an exception gets an instance-level ``__reduce_ex__``
  that does the same for it. Nothing of otel-perf reaches the user's future or ``AsyncResult``.
* A ``ProcessPoolExecutor`` job crosses the pipe compact, both ways: while instrumented, the owner's
  ``ForkingPickler`` reduces the call item of a job of ours to ``_call_item(...)``, and a worker reduces
  the result item carrying its envelope to ``_result_item(...)``: one pickled global reference and a
  tuple each way, where the stdlib's items pickle a class reference and a state dictionary, and ours
  would add ``trampoline`` and ``_deliver`` to them. Both unpickle into the very items the stdlib sends.
  Every other item pickles the stdlib's way (the result reducer is registered for one envelope at a
  time). This took the instrumented no-op round trip from about 1.09x its bare twin to about 1.01-1.03x.
"""

from __future__ import annotations

import contextvars
import functools
import os
import pickle
import sys
import weakref
from collections.abc import Callable, Mapping
from time import perf_counter
from time import time as wall_clock
from typing import Any

from opentelemetry import baggage, propagate, trace
from opentelemetry import context as otel_context
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    Tracer,
)

from otel_perf._context import attach, detach, get_current
from otel_perf._process import bootstrap_worker, current_handle
from otel_perf._safety import guard, log_once, raise_internal_errors
from otel_perf._semconv import (
    CODE_FUNCTION_NAME,
    ERROR_TYPE,
    INSTRUMENTATION_SCOPE,
    JOB_WAIT_DURATION,
    POOL_KIND,
    POOL_NAME,
    PROCESS_PID,
    SCHEMA_URL,
)
from otel_perf.instrumentations import _workers_fork
from otel_perf.instrumentations._workers_state import (
    FOLD_AT,
    SOURCE_MP,
    PoolState,
    error_type,
    runtime,
    states_by_id,
    unpublished,
)

__all__ = [
    "compact_call_items",
    "function_names",
    "is_process_job",
    "job_info",
    "local_job",
    "process_job",
    "run_thread_job",
    "trampoline",
]

#: A finished process job, as its owner logs it: (wait seconds, run seconds[, error.type]).
Entry = tuple[Any, ...]
#: A finished process job on its way back: (owner pid, pool id, entry).
Meta = tuple[int, int, Entry]


#: code object -> (short name, code.function.name, qualname): plain functions sharing a code object
#: (closures made by one def) share their names, so a job's names are computed once per def.
_names_by_code: dict[Any, tuple[str, str, Any]] = {}


def function_names(fn: Any) -> tuple[str, str]:
    """(short name for the span name, ``code.function.name``) of a job's callable."""
    code = getattr(fn, "__code__", None)
    if code is not None:
        found = _names_by_code.get(code)
        if found is not None and found[2] == getattr(fn, "__qualname__", None):
            return found[0], found[1]
    names = _function_names(fn)
    if code is not None and len(_names_by_code) < 4096:
        _names_by_code[code] = (names[0], names[1], getattr(fn, "__qualname__", None))
    return names


def _function_names(fn: Any) -> tuple[str, str]:
    target = fn
    while isinstance(target, functools.partial):
        target = target.func
    qual = getattr(target, "__qualname__", None) or getattr(target, "__name__", None)
    if not isinstance(qual, str):
        qual = type(target).__qualname__
    short = getattr(target, "__name__", None)
    if not isinstance(short, str):
        short = qual
    module = getattr(target, "__module__", None)
    full = f"{module}.{qual}" if isinstance(module, str) and module != "builtins" else qual
    return short, full


#: code object -> (pool name, pool kind, qualname, span name, span attributes but the wait): the head of
#: the spans of a def's jobs on the pool it last ran on, worked out once. Building it costs about 0.5 µs in
#: a loop and about four times that in a just-woken worker thread, a visible share of the spans-on budget
#: (benchmark group workers.thread.roundtrip.paired).
_heads: dict[Any, tuple[str, str, Any, str, dict[str, Any]]] = {}


def _span_head(name: str, kind: str, fn: Any, code: Any) -> tuple[str, str, Any, str, dict[str, Any]]:
    short, full = function_names(fn)
    head = (name, kind, getattr(fn, "__qualname__", None), f"{name} {short}",
            {POOL_NAME: name, POOL_KIND: kind, CODE_FUNCTION_NAME: full})
    if code is not None and len(_heads) < 4096:
        _heads[code] = head
    return head


def _start_span(tracer: Tracer, name: str, kind: str, fn: Any, wait: float,
                context: otel_context.Context | None = None, pid: int | None = None) -> Span | None:
    try:
        code = getattr(fn, "__code__", None)
        head = _heads.get(code)
        if head is None or head[0] != name or head[1] != kind or head[2] != fn.__qualname__:
            head = _span_head(name, kind, fn, code)
        attributes = head[4].copy()
        attributes[JOB_WAIT_DURATION] = wait
        if pid is not None:
            attributes[PROCESS_PID] = pid
        return tracer.start_span(head[3], context=context, kind=SpanKind.INTERNAL, attributes=attributes)
    except Exception as exc:
        _fault("starting a pool job span", exc)
        return None


@guard
def _end_span(span: Span, exc: BaseException | None, etype: str | None) -> None:
    if exc is not None:
        span.set_attribute(ERROR_TYPE, etype or error_type(exc))
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
    span.end()


def run_thread_job(state: PoolState, fn: Callable[..., Any], submitted: float, args: tuple[Any, ...],
                   kwargs: Mapping[str, Any]) -> Any:
    """Run one job of a thread pool; call it inside a copy of the submitter's context."""
    start = perf_counter()
    state.begun.append(start)  # busy workers: begun and not done (PoolState)
    span = None
    tracer = runtime.tracer
    if runtime.spans and tracer is not None:
        # The submitter's context, passed on explicitly: the SDK and its sampler would each look it up
        # again through the API (two Python calls a time).
        parent = get_current()
        span = _start_span(tracer, state.name, state.kind, fn, start - submitted, parent)
        if span is not None:
            # Inside a context copy made for this job only: no detach needed.
            attach(trace.set_span_in_context(span, parent))
    try:
        result = fn(*args, **kwargs)
    except BaseException as exc:
        end = perf_counter()
        etype = error_type(exc)
        done = state.done
        done.append((start - submitted, end - start, etype))
        if len(done) >= FOLD_AT:
            state.fold(False)
        if span is not None:
            _end_span(span, exc, etype)
        raise
    end = perf_counter()
    done = state.done
    done.append((start - submitted, end - start))
    if len(done) >= FOLD_AT:
        state.fold(False)
    if span is not None:
        span.end()
    return result


_my_pid = os.getpid()


def _refresh_pid() -> None:
    global _my_pid
    _my_pid = os.getpid()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_refresh_pid)


def _fault(where: str, exc: Exception) -> None:
    """The guard's behaviour, inline: ``guarded()`` (a generator context manager) costs about 1.5 µs,
    a visible share of a process pool's round trip (benchmark group workers.process.roundtrip)."""
    if raise_internal_errors():
        raise exc
    log_once(("fault", where, type(exc).__name__),
             "otel-perf internal error in %s (%s: %s); the program continues, this measurement is skipped.",
             where, type(exc).__name__, exc, exc_info=True)


# --- process pools: the trampoline --------------------------------------------------------------------

_snapshot_cache: tuple[Any, bytes] | None = None

#: What a job needs beyond the context, when it needs anything: (pool name, pool kind, spans on,
#: snapshot, flush after each job). None when spans are off, there is no snapshot and no per-job flush.
#: The snapshot travels only for a pool whose workers started before otel-perf saw it (see
#: :func:`set_up_workers`).
Extra = tuple[str, str, bool, "bytes | None", bool]

#: What travels with each process job (a tuple of primitives: it pickles fast, in C):
#: (owner pid, pool id, submission time, context carrier, extra, may run as an item of a chunk). The
#: carrier is a W3C ``traceparent`` string, or a full propagator dict when the context also has trace
#: state or baggage, or None without a valid span.
Info = tuple[int, int, float, "str | dict[str, str] | None", "Extra | None", bool]


def _snapshot(handle: Any) -> bytes | None:
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


#: (the last context a job was submitted in, its carrier when that is a traceparent string or None).
#: Contexts are immutable, and a request submits its jobs from one context: the carrier is then worked
#: out once (about 0.9 µs) and found again by identity (0.1 µs). Holds at most that one context.
_last_carrier: tuple[Any, str | None] = (None, None)


def _carrier(ctx: otel_context.Context | None = None) -> str | dict[str, str] | None:
    """The carrier of ``ctx``, by default the current context (:data:`Info`); :func:`job_info` looks in
    ``_last_carrier`` first."""
    global _last_carrier
    if ctx is None:
        ctx = get_current()
    span_context = trace.get_current_span(ctx).get_span_context()
    if not span_context.is_valid:
        _last_carrier = (ctx, None)
        return None
    if span_context.trace_state or baggage.get_all(ctx):
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=ctx)  # not cached: the global propagator may change
        return carrier
    # Formatting traceparent ourselves costs a fraction of propagate.inject/extract (benchmark group
    # workers.process.roundtrip).
    header = f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-{span_context.trace_flags:02x}"
    _last_carrier = (ctx, header)
    return header


def job_info(state: PoolState, chunked: bool = False, flush: bool | None = None) -> Info:
    """What a process job submitted now, in the current context, to the pool of ``state`` carries.

    Args:
        state: the pool's state.
        chunked: the job may run as one item of a chunk (``map``, ``multiprocessing.pool``, a joblib
            batch), whose results leave the worker together (see ``_unsent``); a
            ``ProcessPoolExecutor.submit`` job never does.
        flush: flush what the job recorded before its result leaves the worker; default: for
            ``multiprocessing.pool`` jobs.
    """
    # multiprocessing.pool workers are killed (SIGTERM) by Pool.terminate() and `with Pool()`: they flush
    # after each job that recorded something. ProcessPoolExecutor workers always end gracefully (also with
    # max_tasks_per_child): they flush once, when they exit. joblib kills its workers too (a failed task
    # aborts the call): the last task of each of its batches flushes (_workers_joblib).
    spans = runtime.spans
    snapshot = None
    if state.snapshot_per_job:
        handle = current_handle()
        snapshot = _snapshot(handle) if handle is not None else None
    if flush is None:
        flush = state.source == SOURCE_MP
    extra = (state.name, state.kind, spans, snapshot, flush) if spans or flush or snapshot is not None else None
    ctx = get_current()
    last = _last_carrier
    return (_my_pid, state.id, wall_clock(), last[1] if last[0] is ctx else _carrier(ctx), extra, chunked)


def trampoline(fn: Callable[..., Any], info: Info, /, *args: Any, **kwargs: Any) -> Any:
    """What a process pool runs instead of the user's function (module level: it pickles by name)."""
    owner = info[0]
    if _my_pid == owner:  # called in the owning process itself: nothing to carry back
        return fn(*args, **kwargs)
    wait = wall_clock() - info[2]
    if wait < 0.0:
        wait = 0.0
    start = perf_counter()
    span: Span | None = None
    token: Any = None
    ends: tuple[int, int] | None = None
    if info[4] is None and _worker_pid == _my_pid:
        # The spans-off path of a set-up worker: no span, nothing to count for a flush; only the
        # submitter's context to enter, if it had one.
        carrier = info[3]
        if carrier is not None:
            try:
                last = _last_context
                token = attach(last[1] if last[0] == carrier else _context_from(carrier))  # type: ignore[arg-type]
            except Exception as exc:
                _fault("pool job start in a worker process", exc)
    else:
        span, token, ends = _enter_worker_job(fn, info, wait)
    try:
        result = fn(*args, **kwargs)
    except BaseException as exc:
        run = perf_counter() - start
        etype = error_type(exc)
        if ends is None and info[5]:
            # A failing item ends its chunk or batch, and joblib then kills its workers: flush now.
            ends = _FLUSH_ALL
        _leave_worker_job(span, token, ends, exc, etype)
        _tag_exception(exc, (owner, info[1], (wait, run, etype)))
        raise
    run = perf_counter() - start
    if span is not None or ends is not None:
        _leave_worker_job(span, token, ends, None, None)
    elif token is not None:
        try:
            detach(token)
        except Exception as exc:
            _fault("pool job end in a worker process", exc)
    if info[5]:
        return _ChunkEnvelope(result, (owner, info[1], (wait, run)))
    compact = _compact_results
    if compact is not None:  # this result's item goes back compact (_reduce_result_item)
        compact[0].setdefault(compact[1], _reduce_result_item)
    return _Envelope((_deliver, (result, owner, info[1], (wait, run))))


#: Envelopes of jobs that may run in a chunk, made in this worker and not yet sent. A chunk (``map`` with
#: ``chunksize > 1``) returns its results as one list, and an item failing discards the list of the items
#: before it, which did run: their timings then travel with the failing item's exception instead.
#: Held weakly: an envelope whose sending failed (an unpicklable result) just disappears. Jobs submitted
#: one by one (``ProcessPoolExecutor.submit``) never enter it (about 1 µs a job).
_unsent: weakref.WeakValueDictionary[int, _ChunkEnvelope] = weakref.WeakValueDictionary()


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
        _fault("pickling a pool job", exc)
    return item.__reduce_ex__(pickle.DEFAULT_PROTOCOL)


#: ``concurrent.futures.process._ResultItem`` in this process, once a compact result was unpickled here.
_result_item_type: Any = None


def _result_item(work_id: int, value: Any, owner: int, pool_id: int, entry: Entry, exit_pid: int | None) -> Any:
    """In the owner, unpickling a compact result item: the job's timings logged (:func:`_deliver`), the
    item the pool expects, with the job's own result."""
    global _result_item_type
    item_type = _result_item_type
    if item_type is None:
        from concurrent.futures.process import _ResultItem as item_type

        _result_item_type = item_type
    item = item_type(work_id, None, _deliver(value, owner, pool_id, entry))
    if exit_pid is not None:  # Python 3.11+: the worker leaves after this job (max_tasks_per_child)
        item.exit_pid = exit_pid
    return item


#: In a ``ProcessPoolExecutor`` worker: (``ForkingPickler``'s registered reducers, ``_ResultItem``).
_compact_results: tuple[dict[Any, Any], Any] | None = None


def _reduce_result_item(item: Any) -> Any:
    """``ForkingPickler``'s reduction of a ``ProcessPoolExecutor`` result item, in a worker process.

    The result of a job of ours (an :class:`_Envelope`) goes back as ``_result_item(work id, value, owner
    pid, pool id, entry, exit pid)``: one pickled global instead of two (the ``_ResultItem`` class and
    ``_deliver``) and no state dictionary, as :func:`_reduce_call_item` does on the way out. The trampoline
    registers this reducer for the one result item its envelope goes into, and it removes itself when
    called: any other result item pickles the stdlib's way, with no call of ours.
    """
    try:
        compact = _compact_results
        if compact is not None and compact[0].get(compact[1]) is _reduce_result_item:
            del compact[0][compact[1]]
        result = item.result
        if type(result) is _Envelope and item.exception is None:
            value, owner, pool_id, entry = result[1]
            return (_result_item, (item.work_id, value, owner, pool_id, entry, getattr(item, "exit_pid", None)))
    except Exception as exc:
        _fault("pickling a pool job's result", exc)
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


def is_process_job(fn: Any) -> bool:
    return isinstance(fn, functools.partial) and fn.func is trampoline


def _local_job(state: PoolState, ctx: contextvars.Context, submitted: float, fn: Callable[..., Any], /,
               *args: Any, **kwargs: Any) -> Any:
    try:
        # One captured context may run several items at once (map): each runs in its own copy.
        return ctx.copy().run(run_thread_job, state, fn, submitted, args, kwargs)
    finally:
        state.add_outstanding(-1)


def local_job(state: PoolState, fn: Callable[..., Any]) -> functools.partial[Any]:
    """``fn`` for a pool that runs jobs on threads of this process (``multiprocessing.pool.ThreadPool``)."""
    return functools.partial(_local_job, state, contextvars.copy_context(), perf_counter(), fn)


# --- in the worker process --------------------------------------------------------------------------


class _EndCounter:
    """Counts spans (or log records) ended in this process, so a job flushes only when it has to."""

    def __init__(self) -> None:
        self.count = 0

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        return None

    def _on_ending(self, span: Any) -> None:
        return None

    def on_end(self, span: Any) -> None:
        self.count += 1

    def on_emit(self, log_record: Any) -> None:
        self.count += 1

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


_worker_pid: int | None = None
_worker_tracer: Tracer | None = None
_span_ends: _EndCounter | None = None
_log_ends: _EndCounter | None = None


def _counter_on(provider: Any, add: str) -> _EndCounter | None:
    """Our counter on ``provider`` (added once; a forked child inherits its parent's)."""
    if not hasattr(provider, add) or not hasattr(provider, "__dict__"):
        return None
    found = provider.__dict__.get("_otel_perf_end_counter")
    if found is None:
        found = _EndCounter()
        getattr(provider, add)(found)
        provider.__dict__["_otel_perf_end_counter"] = found
    return found  # type: ignore[no-any-return]


def _ensure_worker_sdk(snapshot: bytes | None) -> None:
    """Once per worker process: configure the SDK from the parent's snapshot when none is set up.

    Under the launcher a spawn worker re-ran sitecustomize and a forked worker inherited its parent's
    providers; only a ``configure()``d parent's spawn/forkserver workers start without an SDK.
    """
    global _worker_pid, _worker_tracer, _span_ends, _log_ends, _compact_results
    _worker_pid = _my_pid
    # Envelopes are pickled here, by multiprocessing's ForkingPickler: their reduction without a Python call;
    # a ProcessPoolExecutor's result items carrying one, compact (_reduce_result_item).
    from multiprocessing.reduction import ForkingPickler

    ForkingPickler.register(_Envelope, tuple)
    process_pools = sys.modules.get("concurrent.futures.process")
    if process_pools is not None:
        _compact_results = (ForkingPickler._extra_reducers, process_pools._ResultItem)  # type: ignore[attr-defined]
    from opentelemetry.sdk.trace import TracerProvider

    if snapshot is not None and not isinstance(trace.get_tracer_provider(), TracerProvider):
        bootstrap_worker(snapshot)
    from opentelemetry._logs import get_logger_provider

    from otel_perf.version import __version__

    _worker_tracer = trace.get_tracer(INSTRUMENTATION_SCOPE, __version__, schema_url=SCHEMA_URL)
    # A worker that ends gracefully runs multiprocessing's finalizers, also when it leaves by os._exit
    # (fork, forkserver), where atexit handlers do not run.
    from multiprocessing.util import Finalize

    Finalize(None, _flush_at_exit, exitpriority=100)
    _span_ends = _counter_on(trace.get_tracer_provider(), "add_span_processor")
    _log_ends = _counter_on(get_logger_provider(), "add_log_record_processor")


def _flush(spans: bool = True, logs: bool = True, metrics: bool = False) -> None:
    unsafe = _workers_fork.unsafe  # signals this worker must not flush (it could hang: _workers_fork)
    if unsafe:
        spans, logs, metrics = (spans and "traces" not in unsafe, logs and "logs" not in unsafe,
                                metrics and "metrics" not in unsafe)
    if spans:
        flush = getattr(trace.get_tracer_provider(), "force_flush", None)
        if flush is not None:
            flush(10_000)
    if logs:
        from opentelemetry._logs import get_logger_provider

        flush = getattr(get_logger_provider(), "force_flush", None)
        if flush is not None:
            flush(10_000)
    if metrics:
        from opentelemetry.metrics import get_meter_provider

        flush = getattr(get_meter_provider(), "force_flush", None)
        if flush is not None:
            flush(10_000)


_flushing = False


@guard
def _flush_at_exit() -> None:
    global _flushing
    _flushing = True
    try:
        _flush(metrics=True)  # the worker's runtime metrics up to its very end (module docstring)
    finally:
        _flushing = False


def _ended() -> tuple[int, int]:
    spans = _span_ends.count if _span_ends is not None else 0
    return spans, (_log_ends.count if _log_ends is not None else 0)


_last_context: tuple[Any, Any] = (None, None)


def _context_from(carrier: str | dict[str, str] | None) -> otel_context.Context | None:
    """The context a job's carrier stands for (the last one is kept in ``_last_context``)."""
    global _last_context
    if carrier is None:
        return None
    if isinstance(carrier, dict):
        return propagate.extract(carrier, context=otel_context.Context())
    last = _last_context
    if last[0] == carrier:  # jobs of one request share it; contexts are immutable
        return last[1]  # type: ignore[no-any-return]
    _, trace_id, span_id, flags = carrier.split("-")
    parent = NonRecordingSpan(SpanContext(int(trace_id, 16), int(span_id, 16), is_remote=True,
                                          trace_flags=TraceFlags(int(flags, 16))))
    ctx = trace.set_span_in_context(parent, otel_context.Context())
    _last_context = (carrier, ctx)
    return ctx


def _enter_worker_job(fn: Any, info: Info, wait: float) -> tuple[Span | None, object, tuple[int, int] | None]:
    """(span, context token, spans and log records ended so far when the job flushes after itself)."""
    span = token = None
    extra = info[4]
    try:
        if _worker_pid != _my_pid:
            _ensure_worker_sdk(extra[3] if extra is not None else None)
        ctx = _context_from(info[3])
        if extra is not None and extra[2] and _worker_tracer is not None:
            span = _start_span(_worker_tracer, extra[0], extra[1], fn, wait, ctx or otel_context.Context(),
                               _my_pid)
            if span is not None:
                ctx = trace.set_span_in_context(span, ctx)
        if ctx is not None:
            token = attach(ctx)
    except Exception as exc:
        _fault("pool job start in a worker process", exc)
    # Else flushed once, when the worker exits (a finalizer).
    return span, token, (_ended() if extra is not None and extra[4] else None)


#: ``ends`` that makes a job flush whatever it recorded (see :func:`_ended`).
_FLUSH_ALL = (-1, -1)


def _leave_worker_job(span: Span | None, token: object, ends: tuple[int, int] | None,
                      exc: BaseException | None, etype: str | None) -> None:
    try:
        if token is not None:
            detach(token)  # type: ignore[arg-type]
        if span is not None:
            _end_span(span, exc, etype)
        if ends is not None:
            spans_ended, logs_ended = _ended()
            # Export what the job recorded before its result leaves the worker (module docstring); a job
            # that recorded nothing costs no flush (a provider we cannot count on is always flushed). The
            # metrics too when the job ran pools of its own here (a nested Parallel) not yet published.
            _flush(spans_ended != ends[0] or _span_ends is None, logs_ended != ends[1], unpublished())
    except Exception as failure:
        _fault("pool job end in a worker process", failure)


# --- carrying the timings back ------------------------------------------------------------------------


def _deliver(value: Any, owner: int, pool_id: int, entry: Entry) -> Any:
    """In the owner, unpickling a job's envelope: log the job's timings into its pool (see ``PoolState``)
    and give back the job's own result."""
    try:
        if owner == _my_pid:
            ref = states_by_id.get(pool_id)
            state = ref() if ref is not None else None
            if state is not None:
                done = state.done
                done.append(entry)
                if len(done) >= FOLD_AT:
                    state.fold(False)
                if state.source == SOURCE_MP:
                    state.add_outstanding(-1)
    except Exception as exc:
        _fault("recording a process job", exc)
    return value


class _Envelope(tuple):  # type: ignore[type-arg]
    """A job's result with its timings; unpickles into the bare result (see the module docstring).

    It is its own reduction, ``(_deliver, (value, owner, pool id, entry))``: a tuple made in C, with no ``__init__`` to
    run, and a worker registers ``tuple`` as its reducer with ``ForkingPickler``
    (:func:`_ensure_worker_sdk`), so pickling it runs no Python code either (``__reduce__`` stays for any
    other pickler). Each Python call saved is about 1% of a no-op process round trip (group
    ``workers.process.roundtrip.paired``): the worker runs it with cold caches.
    """

    __slots__ = ()

    def __reduce__(self) -> tuple[Any, ...]:
        return tuple(self)

    def __repr__(self) -> str:
        return repr(self[1][0])


class _ChunkEnvelope:
    """The envelope of a job that may run as an item of a chunk: known to ``_unsent`` until it is sent."""

    __slots__ = ("__weakref__", "meta", "value")

    def __init__(self, value: Any, meta: Meta) -> None:
        self.value = value
        self.meta = meta
        _unsent[id(self)] = self

    def __reduce__(self) -> tuple[Any, ...]:
        _unsent.pop(id(self), None)
        return (_deliver, (self.value, *self.meta))

    def __repr__(self) -> str:
        # multiprocessing.pool puts repr(result) into MaybeEncodingError when a result does not pickle.
        return repr(self.value)


class _ReduceWithMeta:
    """Instance-level ``__reduce_ex__`` of a job's exception: the exception's own reduction, plus meta."""

    __slots__ = ("exc", "metas")

    def __init__(self, exc: BaseException, metas: list[Meta]) -> None:
        self.exc = exc
        self.metas = metas

    def __call__(self, protocol: int) -> Any:
        exc = self.exc
        exc.__dict__.pop("__reduce_ex__", None)  # one shot, and never part of the pickled state
        reduced = type(exc).__reduce_ex__(exc, protocol)
        if not isinstance(reduced, tuple):
            return reduced
        return (_rebuild_exception, (reduced, self.metas))


def _tag_exception(exc: BaseException, meta: Meta) -> None:
    metas = [meta]
    if _unsent:  # earlier items of this job's chunk: they ran, their list of results is discarded
        metas.extend(envelope.meta for envelope in list(_unsent.values()))
        _unsent.clear()
    try:
        exc.__dict__["__reduce_ex__"] = _ReduceWithMeta(exc, metas)
    except (AttributeError, TypeError):
        pass  # no instance dict: the timings of this failed job are not carried back


def _rebuild_exception(reduced: tuple[Any, ...], metas: list[Meta]) -> Any:
    """Unpickle an exception exactly as pickle would from its own reduction, and record the meta."""
    func, args = reduced[0], reduced[1]
    obj = func(*args)
    state = reduced[2] if len(reduced) > 2 else None
    if state is not None:
        setstate = getattr(obj, "__setstate__", None)
        if setstate is not None:
            setstate(state)
        else:
            slotstate = None
            if isinstance(state, tuple) and len(state) == 2:
                state, slotstate = state
            if state:
                obj.__dict__.update(state)
            if slotstate:
                for key, value in slotstate.items():
                    setattr(obj, key, value)
    if len(reduced) > 3 and reduced[3] is not None:
        for item in reduced[3]:
            obj.append(item)
    if len(reduced) > 4 and reduced[4] is not None:
        for key, value in reduced[4]:
            obj[key] = value
    for meta in metas:
        _deliver(None, *meta)
    return obj

