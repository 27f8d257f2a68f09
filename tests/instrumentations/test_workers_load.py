"""Worker pools under load: busy pools defer their bookkeeping, Pool.map chunks are timed as one, and
``OTEL_PERF_POOL_SPANS=slow`` gives spans only to slow or failed jobs (issue 20)."""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.trace import StatusCode

import otel_perf
from otel_perf._config import load_settings
from otel_perf._semconv import ERROR_TYPE, JOB_OUTCOME, POOL_JOB_DURATION, POOL_JOB_WAIT_DURATION, POOL_NAME
from otel_perf.instrumentations import _workers_joblog, _workers_state
from otel_perf.instrumentations.workers import WorkerPoolInstrumentor
from otel_perf.testing import metric_points
from tests.instrumentations.test_workers import FORK, add, needs_fork, unique


def square(x: int) -> int:
    if x == 1234:
        raise ValueError("item 1234")
    return x * x


def points(reader: Any, name: str, pool: str, **attrs: Any) -> list[Any]:
    return [p for p in metric_points(reader, name) if p.attributes.get(POOL_NAME) == pool
            and all(p.attributes.get(k) == v for k, v in attrs.items())]


# --- busy pools: bookkeeping deferred -----------------------------------------------------------------


def test_a_thread_pools_workers_leave_the_fold_to_the_collection(instrument: Any, metric_reader: Any) -> None:
    """A thread pool's workers never fold the job log below FOLD_BUSY_AT entries, even when its queue
    empties (a fold there would delay the result of the job that ran it); the next collection folds and
    counts every job."""
    instrument(pool_spans=False)
    name = unique("busy")
    jobs = 3 * _workers_joblog.FOLD_AT
    gate = threading.Event()
    with otel_perf.name_pool(cf.ThreadPoolExecutor(1), name) as pool:
        state = _workers_state.state_for(pool)
        pool.submit(gate.wait)
        logged = [pool.submit(lambda: len(state.done)) for _ in range(jobs)]  # all queued behind the gate
        gate.set()
        seen = [future.result() for future in logged]
        pool.submit(time.sleep, 0).result()  # the queue has emptied more than once by now
        assert seen == list(range(1, jobs + 1))
        assert len(state.done) == jobs + 2
    (waits,) = points(metric_reader, POOL_JOB_WAIT_DURATION, name)
    assert waits.count == jobs + 2
    assert not state.done


# --- Pool.map: one job per chunk ------------------------------------------------------------------------


@needs_fork
def test_pool_map_with_spans_off_counts_every_item_and_the_items_of_a_failed_chunk(
        instrument: Any, metric_reader: Any, span_exporter: Any) -> None:
    """map and starmap with the default chunk size, spans off: the results are the program's own, and the
    job histograms count every item; in a chunk whose item fails, the items that ran before it count as
    ok and the failing one as an error (the items after it never ran)."""
    instrument(pool_spans=False)
    name = unique("map")
    with otel_perf.name_pool(FORK.Pool(2), name) as pool:
        assert pool.map(square, range(1000)) == [x * x for x in range(1000)]
        assert pool.starmap(add, [(i, 1) for i in range(300)]) == [i + 1 for i in range(300)]
        with pytest.raises(ValueError, match="item 1234"):
            pool.map(square, range(2000), chunksize=100)  # chunk 1200-1299 fails at its 35th item
    (ok,) = points(metric_reader, POOL_JOB_DURATION, name, **{JOB_OUTCOME: "ok"})
    (error,) = points(metric_reader, POOL_JOB_DURATION, name, **{JOB_OUTCOME: "error"})
    (waits,) = points(metric_reader, POOL_JOB_WAIT_DURATION, name)
    assert ok.count == 1000 + 300 + 1900 + 34
    assert (error.count, error.attributes[ERROR_TYPE]) == (1, "ValueError")
    assert waits.count == ok.count + 1
    assert ok.sum > 0 and ok.min >= 0 and sum(ok.bucket_counts) == ok.count
    assert span_exporter.get_finished_spans() == ()


# --- OTEL_PERF_POOL_SPANS=slow ------------------------------------------------------------------------

SLOW = 0.05


def quick(x: int) -> int:
    return x


def slow(x: int) -> int:
    time.sleep(2 * SLOW)
    return x


def broken(x: int) -> int:
    raise KeyError(x)


def _run_jobs(pool: Any) -> None:
    futures = [pool.submit(quick, 1), pool.submit(slow, 2), pool.submit(broken, 3), pool.submit(quick, 4)]
    cf.wait(futures)
    assert [f.result() for f in (futures[0], futures[1], futures[3])] == [1, 2, 4]
    assert isinstance(futures[2].exception(), KeyError)


def _check_slow_spans(spans: list[tuple[str, int, int, int, int, bool, str | None, list[str]]], name: str,
                      parent: Any, submitted_ns: int, ended_ns: int) -> None:
    """``spans``: (name, trace id, parent span id, start, end, failed, error.type, event names) each."""
    spans = sorted(spans)
    assert [s[0] for s in spans] == [f"{name} broken", f"{name} slow"]
    for _, trace_id, parent_id, start, end, _, _, _ in spans:
        assert (trace_id, parent_id) == (parent.get_span_context().trace_id, parent.get_span_context().span_id)
        assert submitted_ns <= start <= end <= ended_ns
    failed, slow_one = spans
    assert slow_one[4] - slow_one[3] >= 2 * SLOW * 1e9 * 0.95  # its real run time
    assert (slow_one[5], failed[5]) == (False, True)
    assert (failed[6], failed[7]) == ("KeyError", ["exception"])


def _sdk_spans(exporter: Any, name: str) -> list[Any]:
    return [(s.name, s.context.trace_id, s.parent.span_id if s.parent else 0, s.start_time, s.end_time,
             s.status.status_code == StatusCode.ERROR, s.attributes.get(ERROR_TYPE), [e.name for e in s.events])
            for s in exporter.get_finished_spans() if s.attributes.get(POOL_NAME) == name]


def _otlp_spans(receiver: Any, name: str) -> list[Any]:
    return [(s.name, int(s.trace_id, 16), int(s.parent_span_id or "0", 16), s.start, s.end, s.status_code == 2,
             s.attributes.get(ERROR_TYPE), [e.get("name") for e in s.events])
            for s in receiver.spans() if s.attributes.get(POOL_NAME) == name]


def test_slow_mode_gives_spans_only_to_slow_and_failed_thread_jobs(
        instrument: Any, tracer_provider: Any, span_exporter: Any, metric_reader: Any) -> None:
    """With OTEL_PERF_POOL_SPANS=slow, a job gets a span only when it ran at least
    OTEL_PERF_POOL_SPAN_MIN_DURATION or failed; the span is made after the job with its real start and
    end, the submitter's span as parent. The metrics still count every job."""
    instrument(pool_spans="slow", pool_span_min_duration=SLOW)
    name = unique("slow-thread")
    with tracer_provider.get_tracer("test").start_as_current_span("request") as parent:
        submitted_ns = time.time_ns()
        with otel_perf.name_pool(cf.ThreadPoolExecutor(2), name) as pool:
            _run_jobs(pool)
        ended_ns = time.time_ns()
    _check_slow_spans(_sdk_spans(span_exporter, name), name, parent, submitted_ns, ended_ns)
    (ok,) = points(metric_reader, POOL_JOB_DURATION, name, **{JOB_OUTCOME: "ok"})
    (error,) = points(metric_reader, POOL_JOB_DURATION, name, **{JOB_OUTCOME: "error"})
    assert (ok.count, error.count) == (3, 1)


@pytest.fixture
def exported(otel_globals: None, otlp_receiver: Any) -> Iterator[Any]:
    """Global providers exporting to the OTLP receiver (forked workers use the globals), batched with a
    timer that never fires: what arrives was flushed by the workers."""
    from opentelemetry import metrics, trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(
        OTLPSpanExporter(endpoint=f"{otlp_receiver.http_endpoint}/v1/traces"), schedule_delay_millis=600_000))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    trace.set_tracer_provider(provider)
    metrics.set_meter_provider(meter_provider)
    instrumentor = WorkerPoolInstrumentor()
    instrumentor.instrument(tracer_provider=provider, meter_provider=meter_provider,
                            settings=load_settings(pool_spans="slow", pool_span_min_duration=SLOW))
    try:
        yield provider, reader, otlp_receiver
    finally:
        instrumentor.uninstrument()
        provider.shutdown()
        meter_provider.shutdown()


@needs_fork
def test_slow_mode_gives_spans_only_to_slow_and_failed_process_jobs(exported: Any) -> None:
    """The same for a process pool: the worker makes the span after the job, with its real start and end,
    parented by the submitter's span in the owner."""
    provider, reader, receiver = exported
    name = unique("slow-process")
    with provider.get_tracer("test").start_as_current_span("request") as parent:
        submitted_ns = time.time_ns()
        with otel_perf.name_pool(cf.ProcessPoolExecutor(2, mp_context=FORK), name) as pool:
            _run_jobs(pool)
        ended_ns = time.time_ns()
    receiver.wait_for(lambda r: len(_otlp_spans(r, name)) >= 2, timeout=15)
    _check_slow_spans(_otlp_spans(receiver, name), name, parent, submitted_ns, ended_ns)
    (ok,) = points(reader, POOL_JOB_DURATION, name, **{JOB_OUTCOME: "ok"})
    (error,) = points(reader, POOL_JOB_DURATION, name, **{JOB_OUTCOME: "error"})
    assert (ok.count, error.count) == (3, 1)


@needs_fork
def test_slow_mode_in_a_multiprocessing_pool_map(exported: Any) -> None:
    """Pool.map in slow mode times each item (not the chunk): only the slow item gets a span."""
    provider, reader, receiver = exported
    name = unique("slow-map")
    with provider.get_tracer("test").start_as_current_span("request") as parent, \
            otel_perf.name_pool(FORK.Pool(2), name) as pool:
        assert pool.map(slow_item, range(40)) == list(range(40))
    receiver.wait_for(lambda r: len(_otlp_spans(r, name)) >= 1, timeout=15)
    spans = _otlp_spans(receiver, name)
    assert [(s[0], s[2]) for s in spans] == [(f"{name} slow_item", parent.get_span_context().span_id)]
    (ok,) = points(reader, POOL_JOB_DURATION, name, **{JOB_OUTCOME: "ok"})
    assert ok.count == 40


def slow_item(x: int) -> int:
    if x == 17:
        time.sleep(2 * SLOW)
    return x


def test_slow_mode_for_the_users_own_jobs(instrument: Any, span_exporter: Any) -> None:
    """otel_perf.job scopes follow slow mode too: a span, made at the end, only for a slow or failed job."""
    instrument(pool_spans="slow", pool_span_min_duration=SLOW)
    name = unique("slow-custom")
    with otel_perf.job(pool=name, name="fast"):
        pass
    with otel_perf.job(pool=name, name="slow"):
        time.sleep(2 * SLOW)
    with pytest.raises(KeyError), otel_perf.job(pool=name, name="failed"):
        raise KeyError("x")
    spans = [s for s in span_exporter.get_finished_spans() if s.attributes.get(POOL_NAME) == name]
    assert sorted(s.name for s in spans) == [f"{name} failed", f"{name} slow"]
    assert all(s.end_time - s.start_time > 0 for s in spans)
