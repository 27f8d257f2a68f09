"""Running one pool job: in a thread of the owning process, or in a worker process through a trampoline.

Why this module exists: a job must run in the context that submitted it, get its span, and have its wait
and run time recorded by the process that owns the pool (DESIGN.md, "Worker pools" and "Processes").

* Thread pools run :func:`run_thread_job` inside a copy of the submitter's ``contextvars`` context, so
  the span's parent is the submitter's span however often the pool's threads are reused.
* Process pools get a :class:`Job`: a module-level, picklable trampoline (a wrapped callable would not
  pickle) carrying the user's function, a W3C ``traceparent`` carrier, the submission time and, for a
  ``configure()``d parent, a pickled :class:`~otel_perf._sdk.ConfigSnapshot`, from which a spawn or
  forkserver worker without an SDK configures itself once. In the worker the trampoline runs the job
  under the carried context, ends its span and **flushes the worker's tracer and logger providers before
  the result leaves the worker**: fork and forkserver workers end with ``os._exit`` and ``with
  multiprocessing.Pool()`` terminates its workers as soon as the block ends, so anything still queued in
  a batch processor then would be lost. An empty flush costs a lock; a flush with spans is one export.
* The job's timings travel back with its outcome without changing what the pool delivers: the result is
  wrapped in an :class:`_Envelope` whose ``__reduce__`` unpickles, in the owner, into the user's own
  value (recording the timings as a side effect); an exception gets an instance-level ``__reduce_ex__``
  that does the same for it. Nothing of otel-perf reaches the user's future or ``AsyncResult``.
"""

from __future__ import annotations

import contextvars
import functools
import os
import pickle
import time
from collections.abc import Callable, Mapping
from threading import get_ident
from time import perf_counter
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from otel_perf._safety import guard, guarded
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
from otel_perf.instrumentations._workers_state import (
    SOURCE_MP,
    SOURCE_MP_THREAD,
    PoolState,
    error_type,
    runtime,
    state_by_id,
)

__all__ = ["Job", "function_names", "new_job", "run_thread_job"]

#: (owner pid, pool id, wait seconds, run seconds, error.type or None)
Meta = tuple[int, int, float, float, "str | None"]


def function_names(fn: Any) -> tuple[str, str]:
    """(short name for the span name, ``code.function.name``) of a job's callable."""
    target = fn
    while isinstance(target, functools.partial):
        target = target.func
    if isinstance(target, Job):
        target = target.fn
    qual = getattr(target, "__qualname__", None) or getattr(target, "__name__", None)
    if not isinstance(qual, str):
        qual = type(target).__qualname__
    short = getattr(target, "__name__", None)
    if not isinstance(short, str):
        short = qual
    module = getattr(target, "__module__", None)
    full = f"{module}.{qual}" if isinstance(module, str) and module != "builtins" else qual
    return short, full


def _span_attributes(state_name: str, kind: str, full: str, wait: float) -> dict[str, Any]:
    return {POOL_NAME: state_name, POOL_KIND: kind, CODE_FUNCTION_NAME: full, JOB_WAIT_DURATION: wait}


@guard
def _start_span(tracer: Tracer, name: str, kind: str, fn: Any, wait: float,
                context: otel_context.Context | None = None, pid: int | None = None) -> Span:
    qual, full = function_names(fn)
    attributes = _span_attributes(name, kind, full, wait)
    if pid is not None:
        attributes[PROCESS_PID] = pid
    return tracer.start_span(f"{name} {qual}", context=context, kind=SpanKind.INTERNAL, attributes=attributes)


@guard
def _end_span(span: Span, exc: BaseException | None, etype: str | None) -> None:
    if exc is not None:
        span.set_attribute(ERROR_TYPE, etype or type(exc).__qualname__)
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
    span.end()


def run_thread_job(state: PoolState, fn: Callable[..., Any], submitted: float, args: tuple[Any, ...],
                   kwargs: Mapping[str, Any]) -> Any:
    """Run one job of a thread pool; call it inside a copy of the submitter's context."""
    start = perf_counter()
    ident = get_ident()
    running = state.running
    running[ident] = fn
    span = None
    tracer = runtime.tracer
    if runtime.spans and tracer is not None:
        span = _start_span(tracer, state.name, state.kind, fn, start - submitted)
        if span is not None:
            # Inside a context copy made for this job only: no detach needed.
            otel_context.attach(trace.set_span_in_context(span))
    try:
        result = fn(*args, **kwargs)
    except BaseException as exc:
        end = perf_counter()
        running.pop(ident, None)
        etype = error_type(exc)
        state.wait.record(start - submitted)
        state.error_series(etype).record(end - start)
        if span is not None:
            _end_span(span, exc, etype)
        raise
    end = perf_counter()
    running.pop(ident, None)
    state.wait.record(start - submitted)
    state.ok.record(end - start)
    if span is not None:
        span.end()
    return result


# --- process pools: the trampoline --------------------------------------------------------------------

_snapshot_cache: tuple[Any, bytes] | None = None


def _snapshot() -> bytes | None:
    """The pickled configuration snapshot of this process's ``configure()``, if it made one."""
    global _snapshot_cache
    from otel_perf._sdk import current_handle

    handle = current_handle()
    if handle is None or handle._stopped:
        return None
    cached = _snapshot_cache
    if cached is not None and cached[0] is handle:
        return cached[1]
    data = pickle.dumps(handle.snapshot())
    _snapshot_cache = (handle, data)
    return data


class Job:
    """The picklable trampoline a process pool runs instead of the user's function.

    ``local`` is set only for pools that run jobs in the owning process (``multiprocessing`` thread
    pools); it never pickles.
    """

    __slots__ = ("carrier", "fn", "local", "owner", "pool_id", "pool_kind", "pool_name", "snapshot", "spans",
                 "submitted")

    def __init__(self, fn: Callable[..., Any], pool_id: int, pool_name: str, pool_kind: str, spans: bool,
                 carrier: dict[str, str], submitted: float, snapshot: bytes | None, owner: int,
                 local: tuple[PoolState, contextvars.Context, float] | None = None) -> None:
        self.fn = fn
        self.pool_id = pool_id
        self.pool_name = pool_name
        self.pool_kind = pool_kind
        self.spans = spans
        self.carrier = carrier
        self.submitted = submitted
        self.snapshot = snapshot
        self.owner = owner
        self.local = local

    def __reduce__(self) -> tuple[Any, ...]:
        return (Job, (self.fn, self.pool_id, self.pool_name, self.pool_kind, self.spans, self.carrier,
                      self.submitted, self.snapshot, self.owner))

    def __repr__(self) -> str:
        return repr(self.fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        local = self.local
        if local is not None:
            state, ctx, submitted = local
            try:
                return ctx.copy().run(run_thread_job, state, self.fn, submitted, args, kwargs)
            finally:
                state.add_outstanding(-1)
        return _run_in_worker(self, args, kwargs)


def new_job(state: PoolState, fn: Callable[..., Any]) -> Job:
    """A trampoline for ``fn`` submitted now, in the current context, to the pool of ``state``."""
    if state.source == SOURCE_MP_THREAD:
        return Job(fn, state.id, state.name, state.kind, runtime.spans, {}, 0.0, None, os.getpid(),
                   (state, contextvars.copy_context(), perf_counter()))
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return Job(fn, state.id, state.name, state.kind, runtime.spans, carrier, time.time(), _snapshot(),
               os.getpid())


_worker_pid: int | None = None
_worker_tracer: tuple[int, Tracer] | None = None


@guard
def _ensure_worker_sdk(snapshot: bytes | None) -> None:
    """Once per worker process: configure the SDK from the parent's snapshot when none is set up.

    Under the launcher a spawn worker re-ran sitecustomize and a forked worker inherited its parent's
    providers; only a ``configure()``d parent's spawn/forkserver workers start without an SDK.
    """
    global _worker_pid
    pid = os.getpid()
    if _worker_pid == pid:
        return
    _worker_pid = pid
    from opentelemetry.sdk.trace import TracerProvider

    if snapshot is None or isinstance(trace.get_tracer_provider(), TracerProvider):
        return
    from otel_perf._sdk import configure_from_snapshot, current_handle

    if current_handle() is None:
        configure_from_snapshot(pickle.loads(snapshot))


def _tracer_here() -> Tracer:
    global _worker_tracer
    pid = os.getpid()
    cached = _worker_tracer
    if cached is not None and cached[0] == pid:
        return cached[1]
    from otel_perf.version import __version__

    tracer = trace.get_tracer(INSTRUMENTATION_SCOPE, __version__, schema_url=SCHEMA_URL)
    _worker_tracer = (pid, tracer)
    return tracer


@guard
def _flush_worker() -> None:
    """Export what the job recorded before its result leaves the worker (see the module docstring)."""
    flush = getattr(trace.get_tracer_provider(), "force_flush", None)
    if flush is not None:
        flush(10_000)
    from opentelemetry._logs import get_logger_provider

    flush = getattr(get_logger_provider(), "force_flush", None)
    if flush is not None:
        flush(10_000)


def _enter_worker_job(job: Job, wait: float) -> tuple[Span | None, object | None]:
    with guarded("pool job start in a worker process"):
        return _enter_worker_job_unguarded(job, wait)
    return None, None


def _enter_worker_job_unguarded(job: Job, wait: float) -> tuple[Span | None, object | None]:
    _ensure_worker_sdk(job.snapshot)
    ctx = propagate.extract(job.carrier) if job.carrier else None
    span = None
    if job.spans:
        span = _start_span(_tracer_here(), job.pool_name, job.pool_kind, job.fn, wait, ctx, os.getpid())
        if span is not None:
            ctx = trace.set_span_in_context(span, ctx)
    token = otel_context.attach(ctx) if ctx is not None else None
    return span, token


@guard
def _leave_worker_job(span: Span | None, token: object | None, exc: BaseException | None,
                      etype: str | None) -> None:
    if token is not None:
        otel_context.detach(token)  # type: ignore[arg-type]
    if span is not None:
        _end_span(span, exc, etype)
    _flush_worker()


def _run_in_worker(job: Job, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
    if os.getpid() == job.owner:  # called directly in the owning process: nothing to carry back
        return job.fn(*args, **kwargs)
    wait = max(0.0, time.time() - job.submitted)
    start = perf_counter()
    span, token = _enter_worker_job(job, wait)
    try:
        result = job.fn(*args, **kwargs)
    except BaseException as exc:
        run = perf_counter() - start
        etype = error_type(exc)
        _leave_worker_job(span, token, exc, etype)
        _tag_exception(exc, (job.owner, job.pool_id, wait, run, etype))
        raise
    run = perf_counter() - start
    _leave_worker_job(span, token, None, None)
    return _Envelope(result, (job.owner, job.pool_id, wait, run, None))


# --- carrying the timings back ------------------------------------------------------------------------


@guard
def record_meta(meta: Meta) -> None:
    """In the owner: record a finished process job's wait and run time into its pool's series."""
    owner, pool_id, wait, run, etype = meta
    if owner != os.getpid():
        return
    state = state_by_id(pool_id)
    if state is None:
        return
    state.wait.record(wait)
    if etype is None:
        state.ok.record(run)
    else:
        state.error_series(etype).record(run)
    if state.source == SOURCE_MP:
        state.add_outstanding(-1)


def _deliver(value: Any, meta: Meta) -> Any:
    record_meta(meta)
    return value


class _Envelope:
    """A job's result with its timings; unpickles into the bare result (see the module docstring)."""

    __slots__ = ("meta", "value")

    def __init__(self, value: Any, meta: Meta) -> None:
        self.value = value
        self.meta = meta

    def __reduce__(self) -> tuple[Any, ...]:
        return (_deliver, (self.value, self.meta))

    def __repr__(self) -> str:
        # multiprocessing.pool puts repr(result) into MaybeEncodingError when a result does not pickle.
        return repr(self.value)


class _ReduceWithMeta:
    """Instance-level ``__reduce_ex__`` of a job's exception: the exception's own reduction, plus meta."""

    __slots__ = ("exc", "meta")

    def __init__(self, exc: BaseException, meta: Meta) -> None:
        self.exc = exc
        self.meta = meta

    def __call__(self, protocol: int) -> Any:
        exc = self.exc
        exc.__dict__.pop("__reduce_ex__", None)  # one shot, and never part of the pickled state
        reduced = type(exc).__reduce_ex__(exc, protocol)
        if not isinstance(reduced, tuple):
            return reduced
        return (_rebuild_exception, (reduced, self.meta))


def _tag_exception(exc: BaseException, meta: Meta) -> None:
    try:
        exc.__dict__["__reduce_ex__"] = _ReduceWithMeta(exc, meta)
    except (AttributeError, TypeError):
        pass  # no instance dict: the timings of this failed job are not carried back


def _rebuild_exception(reduced: tuple[Any, ...], meta: Meta) -> Any:
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
    record_meta(meta)
    return obj
