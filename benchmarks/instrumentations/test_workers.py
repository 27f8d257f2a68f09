"""Worker pools: what instrumentation adds to a job, against bare twins measured in the same run.

Groups (each has a ``bare`` case): a submit+result round trip of a no-op job, 1000 submits then wait
(100 for process pools), and a 1 ms job, for ThreadPoolExecutor and ProcessPoolExecutor (fork), with
spans off and on. ``*_total`` twins also pay the deferred work: a metric collection every 1000 jobs
(spans are exported synchronously by a SimpleSpanProcessor to a dropping exporter, so their export is
always counted). Group ``workers.reference`` holds the budget units measured in the same run: one SDK
``Histogram.record`` with 3 attributes and the identical job span created directly.

Group ``workers.process.roundtrip.paired`` measures the process-pool budget interleaved: a process round
trip costs about 200 µs, mostly waking threads and processes, and on a shared 2-core machine sequential
cases swing by more than the 10% budget (0.84x to 1.17x from run to run). It alternates short blocks of
round trips through the instrumented ``submit`` and through the original one, on the same pool, and keeps
the median of the paired ratios. Group ``workers.thread.roundtrip.paired`` does the same for the thread
pool budgets (spans off, spans on, the job making its span itself, the job making one SDK record
itself, and records in a loop, rotating), and ``workers.thread.burst1000.paired`` the burst budget (bursts
of 1000 jobs, of 1000 jobs making a record each, and 1000 records in a loop, rotating).

Run: ``.venv/bin/python -m pytest benchmarks/instrumentations/test_workers.py --benchmark-enable``.
"""

from __future__ import annotations

import concurrent.futures as cf
import gc
import multiprocessing as mp
import statistics
import time
import types
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
from otel_perf.instrumentations._workers_trampoline import compact_call_items
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


@pytest.fixture
def frozen_heap() -> Iterator[None]:
    """For the interleaved cases: everything alive before the measurement moves out of the collector's way,
    as in the parsers and GC benchmarks. Otherwise, late in a whole ``make bench`` run, the occasional
    older-generation collection over the whole test process lands in the variant that allocates most
    (a job's span) and skews the paired medians."""
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


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
    if mode.startswith("spans"):
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


def _span_direct(env: _Env) -> Callable[[], None]:
    """A job that creates, itself, the span otel-perf would give it: same name, kind, attributes, parent
    (the submitter's span, passed explicitly since a bare pool carries no context)."""
    tracer = env.tracer_provider.get_tracer("bench")
    parent = trace.set_span_in_context(env.parent)

    def job() -> None:
        span = tracer.start_span("ThreadPoolExecutor noop", context=parent, kind=SpanKind.INTERNAL,
                                 attributes={POOL_NAME: "ThreadPoolExecutor", POOL_KIND: "thread",
                                             CODE_FUNCTION_NAME: "bench.noop", JOB_WAIT_DURATION: 0.00002})
        token = otel_context.attach(trace.set_span_in_context(span))
        otel_context.detach(token)
        span.end()

    return job


def _make(group: str, build: Callable[[_Env], Callable[[], Any]], mode: str, per_op: int) -> Any:
    def case(benchmark: Any, env: _Env, under_parent: None) -> None:
        _bench(benchmark, env, group, build(env), mode, per_op)

    return case


def _job_makes_span(build: Callable[[_Env], Callable[[], Any]]) -> Any:
    def case(benchmark: Any, env: _Env, under_parent: None) -> None:
        """The bare pool running a job that makes the identical span itself (the spans-on budget unit)."""
        _bench(benchmark, env, build.__doc__ or "", build(env), "bare")

    return case


def _thread_roundtrip(env: _Env) -> Callable[[], None]:
    """workers.thread.roundtrip"""
    return _roundtrip(env.thread_pool, noop)


def _thread_burst(env: _Env) -> Callable[[], None]:
    """workers.thread.burst1000"""
    return _burst(env.thread_pool, 1000)


def _thread_job_1ms(env: _Env) -> Callable[[], None]:
    """workers.thread.job1ms"""
    return _roundtrip(env.thread_pool, sleep_1ms)


def _process_roundtrip(env: _Env) -> Callable[[], None]:
    """workers.process.roundtrip"""
    return _roundtrip(env.process_pool, noop)


def _process_burst(env: _Env) -> Callable[[], None]:
    """workers.process.burst100"""
    return _burst(env.process_pool, 100)


def _process_job_1ms(env: _Env) -> Callable[[], None]:
    """workers.process.job1ms"""
    return _roundtrip(env.process_pool, sleep_1ms)


def _thread_roundtrip_span(env: _Env) -> Callable[[], None]:
    """workers.thread.roundtrip"""
    return _roundtrip(env.thread_pool, _span_direct(env))


def _thread_burst_span(env: _Env) -> Callable[[], None]:
    """workers.thread.burst1000"""
    job = _span_direct(env)

    def op() -> None:
        cf.wait([env.thread_pool.submit(job) for _ in range(1000)])

    return op


# One function per case (not parametrize): the bare case of a group is the one whose name says "bare"
# (benchmarks/results.py).
for _scenario, _build, _per_op in (
    ("thread_roundtrip", _thread_roundtrip, 1), ("thread_burst_1000", _thread_burst, 1000),
    ("thread_job_1ms", _thread_job_1ms, 1), ("process_roundtrip", _process_roundtrip, 1),
    ("process_burst_100", _process_burst, 100), ("process_job_1ms", _process_job_1ms, 1),
):
    for _mode in MODES:
        globals()[f"test_{_scenario}_{_mode}"] = _make(_build.__doc__ or "", _build, _mode, _per_op)
test_thread_roundtrip_job_makes_span_itself = _job_makes_span(_thread_roundtrip_span)
test_thread_burst_1000_job_makes_span_itself = _job_makes_span(_thread_burst_span)


def test_thread_roundtrip_contrib_threading(benchmark: Any, env: _Env, under_parent: None) -> None:
    """Contrib's context-only ThreadingInstrumentor, for comparison (no spans, no metrics)."""
    from opentelemetry.instrumentation.threading import ThreadingInstrumentor

    ThreadingInstrumentor().instrument()
    try:
        _bench(benchmark, env, "workers.thread.roundtrip", _roundtrip(env.thread_pool, noop), "contrib")
    finally:
        ThreadingInstrumentor().uninstrument()


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


# --- the process-pool budget, interleaved ------------------------------------------------------------

PAIRS = 300  # pairs of blocks: about 2.5 s with the blocks below
BLOCK = 10  # round trips per block: about 2 ms, shorter than a scheduler slice of the other load


def _rotating(cases: list[tuple[str, Callable[[], float]]], rounds: int, warmup: int) -> dict[str, list[float]]:
    """Each case ``warmup`` times, then ``rounds`` rounds of all cases, the order rotating by one per round
    (with two cases: alternating which goes first). Sample ``i`` of every case comes from round ``i``,
    so the samples pair up by index."""
    for _ in range(warmup):
        for _, case in cases:
            case()
    samples: dict[str, list[float]] = {name: [] for name, _ in cases}
    for repeat in range(rounds):
        shift = repeat % len(cases)
        for name, case in cases[shift:] + cases[:shift]:
            samples[name].append(case())
    return samples


def _measure(benchmark: Any, cases: list[tuple[str, Callable[[], float]]], rounds: int,
             warmup: int) -> dict[str, list[float]]:
    """:func:`_rotating` as the benchmark's single timed round; the samples per case."""
    samples: dict[str, list[float]] = {}
    benchmark.pedantic(lambda: samples.update(_rotating(cases, rounds, warmup)), rounds=1, iterations=1)
    return samples


def _paired(samples: dict[str, list[float]], a: str, b: str) -> list[float]:
    """Per round: case ``a`` minus case ``b``."""
    return [x - y for x, y in zip(samples[a], samples[b], strict=True)]


def _half_records(samples: dict[str, list[float]]) -> tuple[float, float]:
    """Half an SDK record as the thread budgets price it, in the job (``job_records`` minus ``bare``, per
    round), and as reported beside it, in a warm loop (``record_loop``); seconds."""
    in_job = statistics.median(_paired(samples, "job_records", "bare")) / 2
    return in_job, statistics.median(samples["record_loop"]) / 2


def _records_per_call(env: _Env, name: str, n: int) -> Callable[[], float]:
    """n SDK ``Histogram.record`` calls with 3 attributes (the budget unit); seconds per call."""
    histogram = env.meter_provider.get_meter("bench").create_histogram(name, unit="s")

    def records() -> float:
        start = time.perf_counter()
        for _ in range(n):
            histogram.record(0.003, ATTRS3)
        return (time.perf_counter() - start) / n

    return records


def _job_records(env: _Env, name: str) -> Callable[[], None]:
    """A job that records one SDK ``Histogram.record`` with 3 attributes itself: what recording a job's
    metrics through the SDK would cost where it would run, in a just-woken pool thread."""
    histogram = env.meter_provider.get_meter("bench").create_histogram(name, unit="s")

    def job() -> None:
        histogram.record(0.003, ATTRS3)

    return job


def _contrib_submit(pool: cf.ThreadPoolExecutor) -> Callable[..., Any]:
    """``submit`` of ``pool`` as contrib's context-only ``ThreadingInstrumentor`` wraps it (the goal beyond
    the budgets: ours, with context and metrics, should cost less). Bound while contrib is instrumented;
    the bound wrapper keeps working after ``uninstrument()``, so contrib is not left in place."""
    from opentelemetry.instrumentation.threading import ThreadingInstrumentor

    instrumentor = ThreadingInstrumentor()
    instrumentor.instrument()
    try:
        return type(pool).submit.__get__(pool, type(pool))  # type: ignore[no-any-return]
    finally:
        instrumentor.uninstrument()


def _submits(env: _Env, pool: cf.Executor, spans: bool) -> tuple[Callable[..., Any], Callable[..., Any], Any]:
    """(the stdlib's own ``submit`` bound to ``pool``, the instrumented one, the uninstrument function)."""
    original = type(pool).submit  # before instrumenting: the stdlib's own
    bare_submit = types.MethodType(original, pool)
    stop = _instrumented(env, spans=spans)
    instrumented_submit = pool.submit
    assert instrumented_submit.__func__ is not original  # type: ignore[attr-defined]
    return bare_submit, instrumented_submit, stop


def _report(benchmark: Any, capsys: Any, label: str, result: dict[str, Any]) -> None:
    benchmark.extra_info.update(result)
    with capsys.disabled():
        print(f"\n[{label} paired medians] {result}")


@pytest.mark.benchmark(group="workers.process.roundtrip.paired")
def test_process_roundtrip_spans_off_paired(benchmark: Any, env: _Env, under_parent: None, frozen_heap: None,
                                            capsys: Any) -> None:
    """Spans off against bare, interleaved: blocks of no-op round trips on one long-lived pool, through the
    instrumented ``submit`` and through the original ``ProcessPoolExecutor.submit`` (what an uninstrumented
    program calls: the job goes to the same workers as itself, with no trampoline, carrier or envelope),
    alternating which goes first; the budget is the median of the paired ratios. The bare blocks run with
    the stdlib's pickling of call items (``compact_call_items(False)``), as an uninstrumented program does."""
    bare_submit, instrumented_submit, stop = _submits(env, env.process_pool, spans=False)
    pairs = PAIRS if benchmark.enabled else 3  # the smoke run (make test) only checks that it runs

    def block(submit: Callable[..., cf.Future[Any]]) -> float:
        start = time.perf_counter()
        for _ in range(BLOCK):
            submit(noop).result()
        return (time.perf_counter() - start) / BLOCK

    def bare() -> float:
        compact_call_items(False)  # an uninstrumented program pickles call items the stdlib's way
        return block(bare_submit)

    def instrumented() -> float:
        compact_call_items(True)
        return block(instrumented_submit)

    cases: list[tuple[str, Callable[[], float]]] = [("bare", bare), ("spans_off", instrumented)]
    try:
        # warm-up: pool state, series, carrier cache, both paths in the workers
        samples = _measure(benchmark, cases, pairs, warmup=20)
    finally:
        stop()
    ratios = [x / y for x, y in zip(samples["spans_off"], samples["bare"], strict=True)]
    _report(benchmark, capsys, "workers.process.roundtrip", {
        "spans_off_vs_bare (median of paired)": round(statistics.median(ratios), 4),
        "bare_us": round(statistics.median(samples["bare"]) * 1e6, 1),
        "spans_off_us": round(statistics.median(samples["spans_off"]) * 1e6, 1),
        "pairs": pairs,
        "round_trips_per_block": BLOCK,
    })


@pytest.mark.benchmark(group="workers.thread.roundtrip.paired")
def test_thread_roundtrip_paired(benchmark: Any, env: _Env, under_parent: None, frozen_heap: None,
                                 capsys: Any) -> None:
    """The thread-pool budgets, interleaved: a no-op round trip (~60 µs) through the original ``submit``,
    through the instrumented one with spans off and on (``runtime.spans``, the switch that
    ``OTEL_PERF_POOL_SPANS`` sets), and bare round trips of a job making the identical span itself and of
    a job making one SDK ``Histogram.record`` with 3 attributes itself, and round trips through ``submit``
    as contrib's context-only threading instrumentation wraps it (reported, not budgeted), in rotating order.

    Budgets: spans off adds at most half a record over bare; spans on at most half a record over the job
    making its span itself. The record is priced where per-job SDK recording would run, as the span is:
    in the job, on a pool thread just woken (``job_records`` minus ``bare``). Priced in a warm loop on the
    main thread instead (``record_loop``, reported as ``*_vs_half_loop_record``) it costs less than our
    additions do in a cold thread, and the ratio swings with how the run's threads share the two cores
    (0.37x to 1.7x from run to run with the same code)."""
    from otel_perf.instrumentations._workers_state import runtime

    direct_job = _span_direct(env)
    record_job = _job_records(env, "bench.reference.job")
    records = _records_per_call(env, "bench.reference.paired", BLOCK)
    contrib_submit = _contrib_submit(env.thread_pool)
    bare_submit, instrumented_submit, stop = _submits(env, env.thread_pool, spans=False)

    def roundtrips(submit: Callable[..., cf.Future[Any]], job: Callable[[], None], spans: bool) -> float:
        runtime.spans = spans
        start = time.perf_counter()
        for _ in range(BLOCK):
            submit(job).result()
        return (time.perf_counter() - start) / BLOCK

    cases: list[tuple[str, Callable[[], float]]] = [
        ("bare", lambda: roundtrips(bare_submit, noop, False)),
        ("spans_off", lambda: roundtrips(instrumented_submit, noop, False)),
        ("spans_on", lambda: roundtrips(instrumented_submit, noop, True)),
        ("direct", lambda: roundtrips(bare_submit, direct_job, False)),
        ("job_records", lambda: roundtrips(bare_submit, record_job, False)),
        ("record_loop", records),
        ("contrib", lambda: roundtrips(contrib_submit, noop, False)),
    ]
    try:
        samples = _measure(benchmark, cases, 200 if benchmark.enabled else 3, warmup=5)
    finally:
        runtime.spans = False
        stop()
    half_record, half_loop_record = _half_records(samples)
    spans_off_added = statistics.median(_paired(samples, "spans_off", "bare"))
    spans_on_added = statistics.median(_paired(samples, "spans_on", "direct"))
    contrib_added = statistics.median(_paired(samples, "contrib", "bare"))
    _report(benchmark, capsys, "workers.thread.roundtrip", {
        "spans_off_added_vs_half_record": round(spans_off_added / half_record, 3),
        "spans_on_added_vs_half_record": round(spans_on_added / half_record, 3),
        "spans_off_added_vs_half_loop_record": round(spans_off_added / half_loop_record, 3),
        "spans_on_added_vs_half_loop_record": round(spans_on_added / half_loop_record, 3),
        "bare_us": round(statistics.median(samples["bare"]) * 1e6, 2),
        "spans_off_added_us": round(spans_off_added * 1e6, 2),
        "spans_on_added_over_direct_us": round(spans_on_added * 1e6, 2),
        "half_record_in_job_us": round(half_record * 1e6, 2),
        "half_record_loop_us": round(half_loop_record * 1e6, 2),
        "contrib_threading_added_us": round(contrib_added * 1e6, 2),
        "spans_off_added_vs_contrib_threading_added": (round(spans_off_added / contrib_added, 3)
                                                       if contrib_added > 0 else None),
    })


@pytest.mark.benchmark(group="workers.thread.burst1000.paired")
def test_thread_burst_1000_paired(benchmark: Any, env: _Env, under_parent: None, frozen_heap: None,
                                  capsys: Any) -> None:
    """The burst budget, interleaved: 1000 no-op jobs submitted at once, then waited for, through the
    original ``submit`` and through the instrumented one with spans off, 1000 jobs that each make one SDK
    ``Histogram.record`` with 3 attributes through the original ``submit``, and 1000 such records in a
    loop, in rotating order (a burst lasts about 10 ms, and sequential cases drift by more than the budget
    between them). Budget: spans off adds at most half a record per job, the record priced in the job
    (as in ``test_thread_roundtrip_paired``; the loop price is reported too)."""
    jobs = 1000
    record_job = _job_records(env, "bench.reference.burst.job")
    records = _records_per_call(env, "bench.reference.burst", jobs)
    bare_submit, instrumented_submit, stop = _submits(env, env.thread_pool, spans=False)

    def burst(submit: Callable[..., cf.Future[Any]], job: Callable[[], None]) -> float:
        start = time.perf_counter()
        cf.wait([submit(job) for _ in range(jobs)])
        return (time.perf_counter() - start) / jobs

    cases: list[tuple[str, Callable[[], float]]] = [
        ("bare", lambda: burst(bare_submit, noop)),
        ("spans_off", lambda: burst(instrumented_submit, noop)),
        ("job_records", lambda: burst(bare_submit, record_job)),
        ("record_loop", records),
    ]
    try:
        samples = _measure(benchmark, cases, 40 if benchmark.enabled else 2, warmup=3)
    finally:
        stop()
    half_record, half_loop_record = _half_records(samples)
    added = statistics.median(_paired(samples, "spans_off", "bare"))
    _report(benchmark, capsys, "workers.thread.burst1000", {
        "spans_off_added_per_job_vs_half_record": round(added / half_record, 3),
        "spans_off_added_per_job_vs_half_loop_record": round(added / half_loop_record, 3),
        "bare_us_per_job": round(statistics.median(samples["bare"]) * 1e6, 2),
        "spans_off_added_us_per_job": round(added * 1e6, 2),
        "half_record_in_job_us": round(half_record * 1e6, 2),
        "half_record_loop_us": round(half_loop_record * 1e6, 2),
    })
