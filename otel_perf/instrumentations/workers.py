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

The patched methods are in ``_workers_submit``; how a job runs, in ``_workers_thread`` (threads) and
``_workers_trampoline`` (worker processes).
"""

from __future__ import annotations

import functools
import inspect
import sys
import time
import weakref
from collections.abc import Callable
from time import perf_counter
from types import TracebackType
from typing import Any, TypeVar

import wrapt
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from otel_perf._config import get_settings
from otel_perf._patching import Patcher
from otel_perf._safety import guard, guarded, log_once
from otel_perf._semconv import (
    CODE_FUNCTION_NAME,
    INSTRUMENTATION_SCOPE,
    JOB_WAIT_DURATION,
    SCHEMA_URL,
)
from otel_perf.instrumentations import PerfInstrumentor, _workers_fork, _workers_submit
from otel_perf.instrumentations._workers_contrib import find_contrib_wrapper
from otel_perf.instrumentations._workers_joblib import parallel_call, parallel_dispatch
from otel_perf.instrumentations._workers_joblog import JOB_DURATION, JOB_WAIT
from otel_perf.instrumentations._workers_metrics import create_instruments, release_instruments
from otel_perf.instrumentations._workers_state import (
    PoolState,
    custom_state,
    error_type,
    runtime,
    state_for,
)
from otel_perf.instrumentations._workers_thread import end_span, function_names
from otel_perf.instrumentations._workers_trampoline import (
    compact_call_items,
)

__all__ = ["WorkerPoolInstrumentor", "job", "name_pool", "track_queue"]

_F = TypeVar("_F", bound=Callable[..., Any])

_LOKY = ("joblib.externals.loky.process_executor", "loky.process_executor")

_PATCHES: tuple[tuple[str, Callable[[Callable[..., Any]], Callable[..., Any]]], ...] = (
    ("concurrent.futures._base:Future.cancel", _workers_submit.future_cancel),
    ("concurrent.futures.thread:ThreadPoolExecutor.submit", _workers_submit.thread_submit),
    ("concurrent.futures.process:ProcessPoolExecutor.submit", _workers_submit.process_submit),
    ("concurrent.futures.process:ProcessPoolExecutor.map", _workers_submit.process_map),
    ("multiprocessing.pool:Pool.apply_async", _workers_submit.mp_apply_async),
    ("multiprocessing.pool:Pool._map_async", _workers_submit.mp_map_async),
    ("multiprocessing.pool:Pool.imap", _workers_submit.mp_imap),
    ("multiprocessing.pool:Pool.imap_unordered", _workers_submit.mp_imap),
    ("multiprocessing.pool:Pool._repopulate_pool", _workers_submit.mp_repopulate),
    *((f"{module}:ProcessPoolExecutor.submit", _workers_submit.process_submit) for module in _LOKY),
    *((f"{module}:ProcessPoolExecutor.map", _workers_submit.process_map) for module in _LOKY),
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
        mode = self.settings.pool_spans
        runtime.spans = mode is True
        runtime.slow = self.settings.pool_span_min_duration if mode == "slow" else None
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

    __slots__ = ("_key", "_slow", "_span", "_start", "_state", "_token", "attempt", "enqueued_at", "function",
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
        self._slow: float | None = None  # OTEL_PERF_POOL_SPANS=slow: the span is made at exit, if slow

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
        if _workers_submit.suppressed():
            return  # suppress_instrumentation(): no span, no metrics (_exit finds no state)
        state = self._state = custom_state(self.pool)
        self._key = id(self)
        state.running[self._key] = True
        if self.attempt > 1 and runtime.retries is not None:
            runtime.retries.add(1, state.attrs)
        if runtime.active:
            spans, self._slow = runtime.spans, runtime.slow
        else:
            settings = get_settings()
            spans = settings.pool_spans is True
            self._slow = settings.pool_span_min_duration if settings.pool_spans == "slow" else None
        if spans:
            self._span = self._start_span(state, max(0.0, time.monotonic() - self.enqueued_at)
                                          if self.enqueued_at is not None else None)
            self._token = otel_context.attach(trace.set_span_in_context(self._span))
        self._start = perf_counter()

    def _start_span(self, state: PoolState, wait: float | None, start_time: int | None = None) -> Any:
        tracer = runtime.tracer if runtime.active and runtime.tracer is not None else trace.get_tracer(
            INSTRUMENTATION_SCOPE, schema_url=SCHEMA_URL)
        attributes: dict[str, Any] = dict(state.attrs)
        if self.function:
            attributes[CODE_FUNCTION_NAME] = self.function
        if wait is not None:
            attributes[JOB_WAIT_DURATION] = wait
        return tracer.start_span(f"{state.name} {self.name or 'job'}", kind=SpanKind.INTERNAL,
                                 attributes=attributes, start_time=start_time)

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
            end_span(self._span, exc, etype)
            self._span = None
        elif self._slow is not None and (run >= self._slow or exc is not None):
            # Slow mode: the span now, with the job's real start and end (as _workers_thread.slow_span).
            end_time = time.time_ns()
            wait = (max(0.0, time.monotonic() - self.enqueued_at - run) if self.enqueued_at is not None
                    else None)
            end_span(self._start_span(state, wait, end_time - int(run * 1e9)), exc, etype, end_time)


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
