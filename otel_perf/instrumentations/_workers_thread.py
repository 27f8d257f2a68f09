"""Running one job of a thread pool: in a copy of the submitter's context, with its span and timings.

Why this module exists: a job must run in the context that submitted it, get its span, and have its wait
and run time logged into its pool (DESIGN.md, "Worker pools"). A thread pool runs :func:`run_thread_job`
inside a copy of the submitter's ``contextvars`` context, so the span's parent is the submitter's span
however often the pool's threads are reused. The span helpers here (:func:`start_span`,
:func:`end_span`, :func:`function_names`) are shared with process jobs, whose spans a worker process
starts (``_workers_bootstrap``).
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Callable, Mapping
from time import perf_counter, time_ns
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from otel_perf._context import attach, get_current
from otel_perf._safety import guard
from otel_perf._semconv import CODE_FUNCTION_NAME, ERROR_TYPE, JOB_WAIT_DURATION, POOL_KIND, POOL_NAME, PROCESS_PID
from otel_perf.instrumentations._workers_joblog import FOLD_BUSY_AT
from otel_perf.instrumentations._workers_state import PoolState, error_type, fault, runtime

__all__ = ["end_span", "function_names", "local_job", "run_thread_job", "slow_span", "start_span"]

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


def start_span(tracer: Tracer, name: str, kind: str, fn: Any, wait: float,
               context: otel_context.Context | None = None, pid: int | None = None,
               start_time: int | None = None) -> Span | None:
    try:
        code = getattr(fn, "__code__", None)
        head = _heads.get(code)
        if head is None or head[0] != name or head[1] != kind or head[2] != fn.__qualname__:
            head = _span_head(name, kind, fn, code)
        attributes = head[4].copy()
        attributes[JOB_WAIT_DURATION] = wait
        if pid is not None:
            attributes[PROCESS_PID] = pid
        return tracer.start_span(head[3], context=context, kind=SpanKind.INTERNAL, attributes=attributes,
                                 start_time=start_time)
    except Exception as exc:
        fault("starting a pool job span", exc)
        return None


@guard
def end_span(span: Span, exc: BaseException | None, etype: str | None, end_time: int | None = None) -> None:
    if exc is not None:
        span.set_attribute(ERROR_TYPE, etype or error_type(exc))
        span.record_exception(exc, timestamp=end_time)
        span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
    span.end(end_time)


def slow_span(tracer: Tracer, name: str, kind: str, fn: Any, wait: float, run: float,
              context: otel_context.Context | None, exc: BaseException | None, etype: str | None,
              pid: int | None = None) -> None:
    """The span of a job that has just ended (``OTEL_PERF_POOL_SPANS=slow``): made now, with the job's
    real start and end (``run`` seconds, ending now) and ``context``'s span, the submitter's, as parent,
    as the parsers' slow spans are. The job ran without a span of its own, so spans it made itself are
    children of the submitter's span."""
    end_time = time_ns()
    span = start_span(tracer, name, kind, fn, wait, context, pid, end_time - int(run * 1e9))
    if span is not None:
        end_span(span, exc, etype, end_time)


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
        span = start_span(tracer, state.name, state.kind, fn, start - submitted, parent)
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
        if len(done) >= FOLD_BUSY_AT:
            state.fold(False)
        if span is not None:
            end_span(span, exc, etype)
        elif runtime.slow is not None and tracer is not None:  # slow mode: every failed job
            slow_span(tracer, state.name, state.kind, fn, start - submitted, end - start, get_current(), exc,
                      etype)
        raise
    end = perf_counter()
    done = state.done
    done.append((start - submitted, end - start))
    # The log is folded at publication, in the metric reader's thread; here only when it reaches its memory
    # bound (FOLD_BUSY_AT): a fold on a job's thread delays that job's result, and so whoever waits for it.
    if len(done) >= FOLD_BUSY_AT:
        state.fold(False)
    if span is not None:
        span.end()
    else:
        slow = runtime.slow
        if slow is not None and end - start >= slow and tracer is not None:
            slow_span(tracer, state.name, state.kind, fn, start - submitted, end - start, get_current(), None,
                      None)
    return result



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


