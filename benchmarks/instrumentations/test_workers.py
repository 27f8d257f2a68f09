"""Worker pools: what instrumentation adds to a job, against bare twins measured in the same run.

Groups (each has a ``bare`` case): a submit+result round trip of a no-op job, 1000 submits then wait
(100 for process pools), and a 1 ms job, for ThreadPoolExecutor and ProcessPoolExecutor (fork), with
spans off and on. ``*_total`` twins also pay the deferred work: a metric collection every 1000 jobs
(spans are exported synchronously by a SimpleSpanProcessor to a dropping exporter, so their export is
always counted). Group ``workers.reference`` holds the budget units measured in the same run: one SDK
``Histogram.record`` with 3 attributes and the identical job span created directly.

Run: ``.venv/bin/python -m pytest benchmarks/instrumentations/test_workers.py --benchmark-enable``.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind

from otel_perf._config import load_settings
from otel_perf._semconv import CODE_FUNCTION_NAME, JOB_WAIT_DURATION, POOL_KIND, POOL_NAME
from otel_perf.instrumentations.workers import WorkerPoolInstrumentor
from otel_perf.testing import reset_otel_globals

COLLECT_EVERY = 1000


class _Drop(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


def noop() -> None:
    return None


def sleep_1ms() -> None:
    time.sleep(0.001)


class _Env:
    def __init__(self) -> None:
        reset_otel_globals()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(_Drop()))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        trace.set_tracer_provider(self.tracer_provider)  # forked workers use the global one
        metrics.set_meter_provider(self.meter_provider)
        self.instrumentor = WorkerPoolInstrumentor()
        self.thread_pool = cf.ThreadPoolExecutor(2)
        self.process_pool = cf.ProcessPoolExecutor(2, mp_context=mp.get_context("fork"))
        self.process_pool.submit(noop).result()  # start the workers before instrumenting
        self.parent = self.tracer_provider.get_tracer("bench").start_span("request")

    def close(self) -> None:
        self.thread_pool.shutdown()
        self.process_pool.shutdown()
        self.parent.end()
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()
        reset_otel_globals()


@pytest.fixture(scope="module")
def env() -> Iterator[_Env]:
    environment = _Env()
    yield environment
    environment.close()


@pytest.fixture
def under_parent(env: _Env) -> Iterator[None]:
    """Every case runs with a current parent span, as jobs submitted while serving a request do."""
    token = otel_context.attach(trace.set_span_in_context(env.parent))
    yield
    otel_context.detach(token)


def _instrumented(env: _Env, spans: bool) -> Callable[[], None]:
    env.instrumentor.instrument(tracer_provider=env.tracer_provider, meter_provider=env.meter_provider,
                                settings=load_settings(pool_spans=spans))
    return env.instrumentor.uninstrument  # type: ignore[no-any-return]


def _with_collection(env: _Env, op: Callable[[], Any], per_op: int) -> Callable[[], None]:
    """``op`` plus a metric collection every COLLECT_EVERY jobs (the deferred publication work)."""
    state = {"jobs": 0}

    def run() -> None:
        op()
        state["jobs"] += per_op
        if state["jobs"] >= COLLECT_EVERY:
            state["jobs"] = 0
            env.reader.collect()

    return run


def _bench(benchmark: Any, env: _Env, group: str, op: Callable[[], Any], mode: str, per_op: int = 1) -> None:
    benchmark.group = group
    stop = None
    if mode != "bare":
        stop = _instrumented(env, spans=mode.startswith("spans_on"))
    if mode.endswith("total"):
        op = _with_collection(env, op, per_op)
    try:
        op()  # warm-up: first-use set-up (pool state, series) is not what is measured
        benchmark(op)
    finally:
        if stop is not None:
            stop()


def _roundtrip(pool: cf.Executor, fn: Callable[[], None]) -> Callable[[], None]:
    def op() -> None:
        pool.submit(fn).result()

    return op


def _burst(pool: cf.Executor, n: int) -> Callable[[], None]:
    def op() -> None:
        cf.wait([pool.submit(noop) for _ in range(n)])

    return op


MODES = ["bare", "spans_off", "spans_on", "spans_off_total", "spans_on_total"]


@pytest.mark.parametrize("mode", MODES)
def test_thread_roundtrip(benchmark: Any, env: _Env, under_parent: None, mode: str) -> None:
    _bench(benchmark, env, "workers.thread.roundtrip", _roundtrip(env.thread_pool, noop), mode)


def test_thread_roundtrip_contrib_threading(benchmark: Any, env: _Env, under_parent: None) -> None:
    """Contrib's context-only ThreadingInstrumentor, for comparison (no spans, no metrics)."""
    from opentelemetry.instrumentation.threading import ThreadingInstrumentor

    ThreadingInstrumentor().instrument()
    try:
        _bench(benchmark, env, "workers.thread.roundtrip", _roundtrip(env.thread_pool, noop), "bare-of-contrib")
    finally:
        ThreadingInstrumentor().uninstrument()


@pytest.mark.parametrize("mode", MODES)
def test_thread_burst_1000(benchmark: Any, env: _Env, under_parent: None, mode: str) -> None:
    _bench(benchmark, env, "workers.thread.burst1000", _burst(env.thread_pool, 1000), mode, per_op=1000)


@pytest.mark.parametrize("mode", MODES)
def test_thread_job_1ms(benchmark: Any, env: _Env, under_parent: None, mode: str) -> None:
    _bench(benchmark, env, "workers.thread.job1ms", _roundtrip(env.thread_pool, sleep_1ms), mode)


@pytest.mark.parametrize("mode", MODES)
def test_process_roundtrip(benchmark: Any, env: _Env, under_parent: None, mode: str) -> None:
    _bench(benchmark, env, "workers.process.roundtrip", _roundtrip(env.process_pool, noop), mode)


@pytest.mark.parametrize("mode", MODES)
def test_process_burst_100(benchmark: Any, env: _Env, under_parent: None, mode: str) -> None:
    _bench(benchmark, env, "workers.process.burst100", _burst(env.process_pool, 100), mode, per_op=100)


@pytest.mark.parametrize("mode", MODES)
def test_process_job_1ms(benchmark: Any, env: _Env, under_parent: None, mode: str) -> None:
    _bench(benchmark, env, "workers.process.job1ms", _roundtrip(env.process_pool, sleep_1ms), mode)


# --- the budget units, measured in the same run ----------------------------------------------------------

ATTRS3 = {POOL_NAME: "ThreadPoolExecutor", POOL_KIND: "thread", "otel_perf.job.outcome": "ok"}


def test_reference_bare(benchmark: Any) -> None:
    benchmark.group = "workers.reference"
    benchmark(noop)


def test_reference_sdk_histogram_record_3_attrs(benchmark: Any, env: _Env) -> None:
    benchmark.group = "workers.reference"
    histogram = env.meter_provider.get_meter("bench").create_histogram("bench.reference", unit="s")
    benchmark(histogram.record, 0.003, ATTRS3)


def test_reference_job_span_direct(benchmark: Any, env: _Env, under_parent: None) -> None:
    """The span a job gets, created directly: same name, kind, attributes and parent, made current."""
    benchmark.group = "workers.reference"
    tracer = env.tracer_provider.get_tracer("bench")

    def op() -> None:
        span = tracer.start_span("ThreadPoolExecutor noop", kind=SpanKind.INTERNAL, attributes={
            POOL_NAME: "ThreadPoolExecutor", POOL_KIND: "thread", CODE_FUNCTION_NAME: "bench.noop",
            JOB_WAIT_DURATION: 0.00002})
        token = otel_context.attach(trace.set_span_in_context(span))
        otel_context.detach(token)
        span.end()

    benchmark(op)
