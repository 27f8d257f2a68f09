"""In a process pool's worker: setting otel-perf up once, entering and leaving each job, flushing.

Why this module exists: nothing recorded in a job may be lost when its worker ends, and a worker of a
``configure()``d parent must export like its parent.

* Each worker process is set up once, when it starts (``_workers_setup``): :func:`ensure_worker_sdk`
  registers the flush at exit and, for a ``configure()``d parent's spawn, forkserver or loky worker,
  configures the SDK from a pickled :class:`~otel_perf._sdk.ConfigSnapshot` (about 1.1 KB, OTLP headers
  included) that travels once per worker process, with the process's start-up arguments, instead of with
  every job. Only a pool whose workers were already running when otel-perf first saw it sends the
  snapshot with its jobs.
* Fork and forkserver workers end with ``os._exit`` (no ``atexit``), and ``with multiprocessing.Pool()``
  terminates its workers (SIGTERM) as soon as the block ends. Flushing after every job costs one
  synchronous export per job that recorded something (about 1.1 ms with OTLP/gRPC here, against a 63 µs
  round trip), so ``ProcessPoolExecutor`` workers, which always end gracefully, flush once when they exit
  (a ``multiprocessing`` finalizer runs even before ``os._exit``). That exit flush also exports the
  worker's metrics, so its runtime metrics (``process.uptime``, CPU, memory) cover its whole life, not only
  up to its last periodic export. ``multiprocessing.pool`` workers can be terminated at any moment, so they
  flush after each job that recorded a span or log record, before its result leaves (a worker that ends
  gracefully, after ``close()`` or ``maxtasksperchild``, also flushes its metrics at exit). Flushing on the
  SIGTERM instead was tried and rejected: a Python signal handler runs only in the main thread, and when
  the kernel hands the signal to another thread of a worker blocked on the pool's queue lock, the worker
  never dies and ``terminate()`` waits forever (seen on 3.13, about 1 run in 20).
"""

from __future__ import annotations

from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, Tracer

from otel_perf._context import attach, detach
from otel_perf._process import bootstrap_worker
from otel_perf._safety import guard
from otel_perf._semconv import INSTRUMENTATION_SCOPE, SCHEMA_URL
from otel_perf.instrumentations import _workers_carrier, _workers_fork
from otel_perf.instrumentations._workers_carrier import (
    EXTRA_FLUSH,
    EXTRA_KIND,
    EXTRA_NAME,
    EXTRA_SLOW,
    EXTRA_SNAPSHOT,
    EXTRA_SPANS,
    INFO_CARRIER,
    INFO_EXTRA,
    Info,
    context_from,
)
from otel_perf.instrumentations._workers_pickle import use_compact_results
from otel_perf.instrumentations._workers_state import fault, unpublished
from otel_perf.instrumentations._workers_thread import end_span, slow_span, start_span

__all__ = ["FLUSH_ALL", "ensure_worker_sdk", "enter_worker_job", "flush", "leave_worker_job", "worker_pid",
           "worker_slow_span"]


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


#: The pid of this process once it was set up as a worker (:func:`ensure_worker_sdk`).
worker_pid: int | None = None
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


def ensure_worker_sdk(snapshot: bytes | None) -> None:
    """Once per worker process: configure the SDK from the parent's snapshot when none is set up.

    Under the launcher a spawn worker re-ran sitecustomize and a forked worker inherited its parent's
    providers; only a ``configure()``d parent's spawn/forkserver workers start without an SDK.
    """
    global worker_pid, _worker_tracer, _span_ends, _log_ends
    worker_pid = _workers_carrier.my_pid
    use_compact_results()
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


def flush(spans: bool = True, logs: bool = True, metrics: bool = False) -> None:
    unsafe = _workers_fork.unsafe  # signals this worker must not flush (it could hang: _workers_fork)
    if unsafe:
        spans, logs, metrics = (spans and "traces" not in unsafe, logs and "logs" not in unsafe,
                                metrics and "metrics" not in unsafe)
    if spans:
        force_flush = getattr(trace.get_tracer_provider(), "force_flush", None)
        if force_flush is not None:
            force_flush(10_000)
    if logs:
        from opentelemetry._logs import get_logger_provider

        force_flush = getattr(get_logger_provider(), "force_flush", None)
        if force_flush is not None:
            force_flush(10_000)
    if metrics:
        from opentelemetry.metrics import get_meter_provider

        force_flush = getattr(get_meter_provider(), "force_flush", None)
        if force_flush is not None:
            force_flush(10_000)


@guard
def _flush_at_exit() -> None:
    flush(metrics=True)  # the worker's runtime metrics up to its very end (module docstring)


def _ended() -> tuple[int, int]:
    spans = _span_ends.count if _span_ends is not None else 0
    return spans, (_log_ends.count if _log_ends is not None else 0)


def enter_worker_job(fn: Any, info: Info, wait: float) -> tuple[Span | None, object, tuple[int, int] | None]:
    """(span, context token, spans and log records ended so far when the job flushes after itself)."""
    span = token = None
    extra = info[INFO_EXTRA]
    try:
        if worker_pid != _workers_carrier.my_pid:
            ensure_worker_sdk(extra[EXTRA_SNAPSHOT] if extra is not None else None)
        ctx = context_from(info[INFO_CARRIER])
        if extra is not None and extra[EXTRA_SPANS] and _worker_tracer is not None:
            span = start_span(_worker_tracer, extra[EXTRA_NAME], extra[EXTRA_KIND], fn, wait,
                              ctx or otel_context.Context(), _workers_carrier.my_pid)
            if span is not None:
                ctx = trace.set_span_in_context(span, ctx)
        if ctx is not None:
            token = attach(ctx)
    except Exception as exc:
        fault("pool job start in a worker process", exc)
    # Else flushed once, when the worker exits (a finalizer).
    return span, token, (_ended() if extra is not None and extra[EXTRA_FLUSH] else None)


def worker_slow_span(fn: Any, info: Info, wait: float, run: float, exc: BaseException | None,
                     etype: str | None) -> None:
    """The span of a job that has just ended in this worker, in slow mode (``EXTRA_SLOW`` set): made now,
    with its real start and end and the submitter's span as parent (``_workers_thread.slow_span``)."""
    extra = info[INFO_EXTRA]
    if extra is None or extra[EXTRA_SLOW] is None or _worker_tracer is None:
        return
    try:
        slow_span(_worker_tracer, extra[EXTRA_NAME], extra[EXTRA_KIND], fn, wait, run,
                  context_from(info[INFO_CARRIER]) or otel_context.Context(), exc, etype,
                  _workers_carrier.my_pid)
    except Exception as failure:
        fault("a slow pool job's span in a worker process", failure)


#: ``ends`` that makes a job flush whatever it recorded (see :func:`_ended`).
FLUSH_ALL = (-1, -1)


def leave_worker_job(span: Span | None, token: object, ends: tuple[int, int] | None,
                      exc: BaseException | None, etype: str | None) -> None:
    try:
        if token is not None:
            detach(token)  # type: ignore[arg-type]
        if span is not None:
            end_span(span, exc, etype)
        if ends is not None:
            spans_ended, logs_ended = _ended()
            # Export what the job recorded before its result leaves the worker (module docstring); a job
            # that recorded nothing costs no flush (a provider we cannot count on is always flushed). The
            # metrics too when the job ran pools of its own here (a nested Parallel) not yet published.
            flush(spans_ended != ends[0] or _span_ends is None, logs_ended != ends[1], unpublished())
    except Exception as failure:
        fault("pool job end in a worker process", failure)


# --- carrying the timings back ------------------------------------------------------------------------
