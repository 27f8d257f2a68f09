"""Worker pools: a span per job in the submitter's context, and queue, worker and job metrics per pool.

Why this module exists: programs run their work on pools, and no OpenTelemetry package tells them how deep
the queue is, how long jobs wait, how many workers are busy, or carries the trace into a process pool.

**Usage**::

    from otel_perf.instrumentations.workers import WorkerPoolInstrumentor
    WorkerPoolInstrumentor().instrument(tracer_provider=tp, meter_provider=mp)   # or otel_perf.configure()

    pool = otel_perf.name_pool(ThreadPoolExecutor(8), "fetch")
    with otel_perf.job(pool="ingest", attempt=2):                                 # a home-made pool
        ...
    otel_perf.track_queue(my_queue, "ingest")

**What it patches**: ``concurrent.futures.ThreadPoolExecutor.submit`` (and so ``map``),
``ProcessPoolExecutor.submit`` and ``.map``, ``multiprocessing.pool.Pool`` (and ``ThreadPool``)
``apply_async``, ``_map_async`` (``map``, ``map_async``, ``starmap``, ``starmap_async``), ``imap`` and
``imap_unordered`` (the synchronous forms are built on them) and ``_repopulate_pool`` (to set up the
worker processes it starts), and ``concurrent.futures.Future.cancel`` (to count cancelled jobs). When
joblib is imported: loky's ``ProcessPoolExecutor.submit`` and ``.map`` (joblib's default backend, and the
``loky`` package itself), and ``joblib.Parallel.__call__`` and ``._dispatch`` (``_workers_joblib``).
Methods are patched on the classes, so pools created before instrumentation are covered too.

A submission made while instrumentation is suppressed (``opentelemetry.instrumentation.utils.suppress_instrumentation``,
as the SDK's exporters and processors run) is passed straight to the pool: no span, no metrics.

**What it emits** (DESIGN.md, "Worker pools"): a span ``{otel_perf.pool.name} {function}`` (INTERNAL)
per job when ``OTEL_PERF_POOL_SPANS`` is on (the default), child of the submitter's span, also in worker
processes started by fork, spawn or forkserver; the metrics ``otel_perf.pool.queue.depth``,
``.worker.busy``, ``.worker.limit``, ``.worker.memory.max`` (read from the pool at collection time),
``otel_perf.pool.job.wait.duration`` and ``.job.duration`` (aggregated in plain Python, published at
collection), ``.job.rejected`` and ``.job.retries``.

**Reads**: ``OTEL_PERF_ENABLED``, ``OTEL_PERF_POOL_SPANS``.

Thread pools use plain closures, not wrapt, on ``submit``: ``benchmarks/instrumentations/test_workers.py``
(group ``workers.thread.roundtrip``): wrapt costs about 1 µs a call, a large share of the budget there.
"""

from __future__ import annotations

import functools
import inspect
import sys
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextvars import copy_context
from time import perf_counter
from types import FunctionType, TracebackType
from typing import Any, TypeVar

import wrapt
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY
from opentelemetry.trace import SpanKind

from otel_perf._config import get_settings
from otel_perf._context import get_current
from otel_perf._patching import Patcher
from otel_perf._safety import guard, guarded, log_once
from otel_perf._semconv import (
    CODE_FUNCTION_NAME,
    INSTRUMENTATION_SCOPE,
    JOB_WAIT_DURATION,
    POOL_KIND_THREAD,
    SCHEMA_URL,
)
from otel_perf.instrumentations import PerfInstrumentor, _workers_contrib, _workers_fork
from otel_perf.instrumentations._workers_contrib import find_contrib_wrapper, job_target
from otel_perf.instrumentations._workers_joblib import batch_of, expand_batch, parallel_call, parallel_dispatch
from otel_perf.instrumentations._workers_run import (
    _end_span,
    compact_call_items,
    function_names,
    is_process_job,
    job_info,
    local_job,
    process_job,
    run_thread_job,
    trampoline,
)
from otel_perf.instrumentations._workers_setup import SET_UP, set_up_workers
from otel_perf.instrumentations._workers_state import (
    JOB_DURATION,
    JOB_WAIT,
    SOURCE_MP_THREAD,
    PoolState,
    create_instruments,
    custom_state,
    error_type,
    release_instruments,
    runtime,
    state_for,
)

__all__ = ["WorkerPoolInstrumentor", "job", "name_pool", "track_queue"]

_F = TypeVar("_F", bound=Callable[..., Any])
_FUTURE_MARK = "_otel_perf_pool"
#: The context key of ``suppress_instrumentation()``; read from the current context directly (one C call
#: and a dict lookup on the submit path, benchmark group ``workers.thread.roundtrip.paired``).
_SUPPRESSED = _SUPPRESS_INSTRUMENTATION_KEY


def _suppressed() -> bool:
    return bool(get_current().get(_SUPPRESSED))


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



def _thread_submit(original: Callable[..., Any]) -> Callable[..., Any]:
    call = _callable_original(original)

    @functools.wraps(original)
    def submit(self: Any, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        if not runtime.active or get_current().get(_SUPPRESSED):
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
        future.__dict__[_FUTURE_MARK] = state
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


def _process_submit(original: Callable[..., Any]) -> Callable[..., Any]:
    """``submit`` of ``ProcessPoolExecutor`` and of loky's executor."""
    call = _callable_original(original)
    stdlib = getattr(original, "__module__", "") == "concurrent.futures.process"
    if stdlib:
        compact_call_items(True)  # concurrent.futures.process is imported: this patch is being applied
    # loky pickles results its own way: its jobs' results go back as chunk items do (_workers_run).
    chunked = not stdlib

    @functools.wraps(original)
    def submit(self: Any, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        if not runtime.active or get_current().get(_SUPPRESSED):
            return call(self, fn, *args, **kwargs)
        try:
            state = self.__dict__["_otel_perf_pool"]
        except KeyError:
            state = state_for(self)
        if state.ignored:
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
        future.__dict__[_FUTURE_MARK] = state
        return future

    return submit


def _process_map(original: Callable[..., Any]) -> Callable[..., Any]:
    call = _callable_original(original)

    @functools.wraps(original)
    def map(self: Any, fn: Callable[..., Any], *iterables: Iterable[Any], **kwargs: Any) -> Any:
        if not runtime.active or _suppressed():
            return call(self, fn, *iterables, **kwargs)
        state = state_for(self)
        if state.ignored:
            return call(self, fn, *iterables, **kwargs)
        if not state.ready:
            _set_up(self, state, _executor_context(self), bool(self._processes))
        return call(self, process_job(state, fn), *iterables, **kwargs)

    return map


def _future_cancel(original: Callable[..., Any]) -> Callable[..., Any]:
    call = _callable_original(original)

    @functools.wraps(original)
    def cancel(self: Any) -> bool:
        state: PoolState | None = self.__dict__.get(_FUTURE_MARK)
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
    if not runtime.active or _suppressed():
        return None
    try:
        state: PoolState = pool.__dict__["_otel_perf_pool"]
    except KeyError:
        state = state_for(pool)
    if state.ignored:
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


def _mp_apply_async(original: Callable[..., Any]) -> Callable[..., Any]:
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


def _mp_map_async(original: Callable[..., Any]) -> Callable[..., Any]:
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
            return call(self, _job_for(state, func), iterable, *args, **kwargs)
        except BaseException:
            state.add_outstanding(-count)
            raise

    return _map_async


def _counted(state: PoolState, iterable: Iterable[Any]) -> Iterator[Any]:
    for item in iterable:
        state.add_outstanding(1)
        yield item


def _mp_imap(original: Callable[..., Any]) -> Callable[..., Any]:
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


def _mp_repopulate(original: Callable[..., Any]) -> Callable[..., Any]:
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


_LOKY = ("joblib.externals.loky.process_executor", "loky.process_executor")

_PATCHES: tuple[tuple[str, Callable[[Callable[..., Any]], Callable[..., Any]]], ...] = (
    ("concurrent.futures._base:Future.cancel", _future_cancel),
    ("concurrent.futures.thread:ThreadPoolExecutor.submit", _thread_submit),
    ("concurrent.futures.process:ProcessPoolExecutor.submit", _process_submit),
    ("concurrent.futures.process:ProcessPoolExecutor.map", _process_map),
    ("multiprocessing.pool:Pool.apply_async", _mp_apply_async),
    ("multiprocessing.pool:Pool._map_async", _mp_map_async),
    ("multiprocessing.pool:Pool.imap", _mp_imap),
    ("multiprocessing.pool:Pool.imap_unordered", _mp_imap),
    ("multiprocessing.pool:Pool._repopulate_pool", _mp_repopulate),
    *((f"{module}:ProcessPoolExecutor.submit", _process_submit) for module in _LOKY),
    *((f"{module}:ProcessPoolExecutor.map", _process_map) for module in _LOKY),
    ("joblib.parallel:Parallel.__call__", parallel_call),
    ("joblib.parallel:Parallel._dispatch", parallel_dispatch),
)


_watching_contrib = False


def _watch_contrib_threading() -> None:
    """Find contrib's submit closure when its threading instrumentation is (or gets) imported (once per
    process: an import hook cannot be removed, and what it finds stays valid)."""
    global _watching_contrib
    if not _watching_contrib:
        _watching_contrib = True
        wrapt.register_post_import_hook(guard(find_contrib_wrapper), "opentelemetry.instrumentation.threading")


class WorkerPoolInstrumentor(PerfInstrumentor):
    """Spans and metrics for ``concurrent.futures`` and ``multiprocessing.pool`` pools (module docstring)."""

    _patcher: Patcher | None = None

    def _start(self, **kwargs: Any) -> None:
        create_instruments(self.meter)
        runtime.tracer = self.tracer
        runtime.spans = bool(self.settings.pool_spans)
        runtime.active = True
        self._patcher = Patcher("otel_perf_workers")
        for path, factory in _PATCHES:
            self._patcher.replace(path, factory)
        _watch_contrib_threading()
        _workers_fork.activate(True)  # forks wait for exports in progress (worker processes flush)

    def _stop(self) -> None:
        runtime.active = False
        _workers_fork.activate(False)
        if self._patcher is not None:
            self._patcher.unpatch_all()
            self._patcher = None
        if "concurrent.futures.process" in sys.modules:
            compact_call_items(False)
        meter = getattr(self, "meter", None)
        if meter is not None:
            # Everything the pools finished goes into the SDK's storage before the histograms are unbound:
            # the providers' final export (shutdown() uninstruments first) then carries it.
            with guarded("publishing pool jobs before uninstrumenting"):
                JOB_WAIT.publish()
                JOB_DURATION.publish()
            release_instruments(meter)


# --- the public API ----------------------------------------------------------------------------------

_PoolT = TypeVar("_PoolT")
_QueueT = TypeVar("_QueueT")


def name_pool(pool: _PoolT, name: str) -> _PoolT:
    """Name a pool for its spans and metrics (``otel_perf.pool.name``); returns the pool.

    Args:
        pool: a ``ThreadPoolExecutor``, ``ProcessPoolExecutor``, ``multiprocessing.pool.Pool`` or
            ``ThreadPool``.
        name: a low-cardinality name, such as ``"fetch"``.
    """
    if not hasattr(pool, "__dict__"):
        log_once(("name_pool", type(pool)), "otel-perf: cannot name a %s (no instance dictionary)",
                 type(pool).__name__)
        return pool
    state_for(pool, by_user=True).rename(str(name))
    return pool


def track_queue(queue: _QueueT, name: str) -> _QueueT:
    """Report ``queue.qsize()`` as the queue depth of the user's pool ``name``; returns the queue.

    Works with ``queue.Queue``, ``asyncio.Queue``, ``multiprocessing.Queue`` (where ``qsize`` is
    implemented) or anything with ``qsize()``. The queue is held weakly where it allows that.
    """
    state = custom_state(str(name))
    try:
        ref: Callable[[], Any] = weakref.ref(queue)
    except TypeError:
        ref = functools.partial(lambda q: q, queue)  # not weakly referenceable: keep it
    state.queues.append(ref)
    return queue


class _JobScope:
    """What ``otel_perf.job(...)`` returns: a context manager for one job, or a decorator (each call of
    the decorated function is one job)."""

    __slots__ = ("_key", "_span", "_start", "_state", "_token", "attempt", "enqueued_at", "function",
                 "name", "pool")

    def __init__(self, pool: str, name: str | None, attempt: int, enqueued_at: float | None,
                 function: str | None = None) -> None:
        self.pool = pool
        self.name = name
        self.attempt = attempt
        self.enqueued_at = enqueued_at
        self.function = function
        self._span: Any = None
        self._token: Any = None
        self._state: PoolState | None = None
        self._start = 0.0
        self._key = 0

    def __enter__(self) -> _JobScope:
        self._enter()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._exit(exc)

    def __call__(self, fn: _F) -> _F:
        short, full = function_names(fn)
        pool, name, attempt, enqueued_at = self.pool, self.name or short, self.attempt, self.enqueued_at
        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                with _JobScope(pool, name, attempt, enqueued_at, full):
                    return await fn(*args, **kwargs)

            return run_async  # type: ignore[return-value]

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            with _JobScope(pool, name, attempt, enqueued_at, full):
                return fn(*args, **kwargs)

        return run  # type: ignore[return-value]

    @guard
    def _enter(self) -> None:
        if _suppressed():
            return  # suppress_instrumentation(): no span, no metrics (_exit finds no state)
        state = self._state = custom_state(self.pool)
        self._key = id(self)
        state.running[self._key] = True
        if self.attempt > 1 and runtime.retries is not None:
            runtime.retries.add(1, state.attrs)
        spans = runtime.spans if runtime.active else get_settings().pool_spans
        if spans:
            tracer = runtime.tracer if runtime.active and runtime.tracer is not None else trace.get_tracer(
                INSTRUMENTATION_SCOPE, schema_url=SCHEMA_URL)
            attributes: dict[str, Any] = dict(state.attrs)
            if self.function:
                attributes[CODE_FUNCTION_NAME] = self.function
            if self.enqueued_at is not None:
                attributes[JOB_WAIT_DURATION] = max(0.0, time.monotonic() - self.enqueued_at)
            self._span = tracer.start_span(f"{state.name} {self.name or 'job'}", kind=SpanKind.INTERNAL,
                                           attributes=attributes)
            self._token = otel_context.attach(trace.set_span_in_context(self._span))
        self._start = perf_counter()

    @guard
    def _exit(self, exc: BaseException | None) -> None:
        run = perf_counter() - self._start
        state = self._state
        if state is None:
            return
        state.running.pop(self._key, None)
        if self.enqueued_at is not None:
            state.wait.record(max(0.0, time.monotonic() - self.enqueued_at - run))
        etype = error_type(exc) if exc is not None else None
        if etype is None:
            state.ok.record(run)
        else:
            state.error_series(etype).record(run)
        if self._token is not None:
            otel_context.detach(self._token)
            self._token = None
        if self._span is not None:
            _end_span(self._span, exc, etype)
            self._span = None


def job(pool: str, *, name: str | None = None, attempt: int = 1,
        enqueued_at: float | None = None) -> _JobScope:
    """Record one job of the user's own pool: a span and the pool metrics of DESIGN.md.

    Usage::

        with otel_perf.job(pool="ingest", attempt=n):
            handle(item)

        @otel_perf.job(pool="ingest")
        def handle(item): ...

    Args:
        pool: the pool's name (``otel_perf.pool.name``; kind ``custom``).
        name: the job's name in the span name ``{pool} {name}`` (default: the decorated function's name,
            else ``job``).
        attempt: which attempt this is; ``attempt > 1`` counts one ``otel_perf.pool.job.retries``.
        enqueued_at: ``time.monotonic()`` when the job was queued, to record its wait.

    Returns:
        A context manager for one job, which is also a decorator (each call is then one job).
    """
    return _JobScope(str(pool), name, int(attempt), enqueued_at)
