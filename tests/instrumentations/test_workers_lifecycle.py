"""Worker pools over their whole life: pools gone before the next collection, shut-down pools, pools of
OpenTelemetry itself, suppressed submissions, and the set-up of worker processes."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import gc
import multiprocessing as mp
import multiprocessing.pool as mpp
import os
import sys
import threading
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.instrumentation.utils import suppress_instrumentation

import otel_perf
from otel_perf._config import load_settings
from otel_perf._semconv import (
    POOL_JOB_DURATION,
    POOL_JOB_WAIT_DURATION,
    POOL_NAME,
    POOL_QUEUE_DEPTH,
    POOL_WORKER_BUSY,
)
from otel_perf.instrumentations import _workers_state
from otel_perf.instrumentations._workers_state import JOB_DURATION, JOB_WAIT
from otel_perf.instrumentations.workers import WorkerPoolInstrumentor
from otel_perf.testing import metric_points
from tests.instrumentations.test_workers import FORK, job_spans, needs_fork, one_value, unique, work


def counted(reader: Any, name: str) -> tuple[int, int]:
    """(jobs in otel_perf.pool.job.duration, jobs in otel_perf.pool.job.wait.duration) of pool ``name``."""
    data = reader.get_metrics_data()
    runs = sum(p.count for p in metric_points(data, POOL_JOB_DURATION) if p.attributes.get(POOL_NAME) == name)
    waits = sum(p.count for p in metric_points(data, POOL_JOB_WAIT_DURATION)
                if p.attributes.get(POOL_NAME) == name)
    return runs, waits


# --- pools gone before the next collection -----------------------------------------------------------


def _thread_executor(name: str, jobs: int) -> None:
    with cf.ThreadPoolExecutor(2, thread_name_prefix=name) as pool:
        assert [f.result() for f in [pool.submit(work, i) for i in range(jobs)]] == [i * 2 for i in range(jobs)]


def _process_executor(name: str, jobs: int) -> None:
    with otel_perf.name_pool(cf.ProcessPoolExecutor(2, mp_context=FORK), name) as pool:
        assert list(pool.map(work, range(jobs))) == [i * 2 for i in range(jobs)]


def _multiprocessing_pool(name: str, jobs: int) -> None:
    with otel_perf.name_pool(FORK.Pool(2), name) as pool:
        assert pool.map(work, range(jobs)) == [i * 2 for i in range(jobs)]


def _multiprocessing_thread_pool(name: str, jobs: int) -> None:
    with otel_perf.name_pool(mpp.ThreadPool(2), name) as pool:
        assert pool.map(work, range(jobs)) == [i * 2 for i in range(jobs)]


def _asyncio_default_executor(name: str, jobs: int) -> None:
    async def main() -> list[int]:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(cf.ThreadPoolExecutor(2, thread_name_prefix=name))
        return list(await asyncio.gather(*(loop.run_in_executor(None, work, i) for i in range(jobs))))

    assert asyncio.run(main()) == [i * 2 for i in range(jobs)]


SCOPED = {
    "ThreadPoolExecutor": _thread_executor,
    "ThreadPool": _multiprocessing_thread_pool,
    "asyncio": _asyncio_default_executor,
    "ProcessPoolExecutor": pytest.param(_process_executor, marks=needs_fork),
    "Pool": pytest.param(_multiprocessing_pool, marks=needs_fork),
}


@pytest.mark.parametrize("run", list(SCOPED.values()), ids=list(SCOPED))
def test_a_pool_gone_before_the_collection_loses_no_job(instrumented: Any, metric_reader: Any, run: Any) -> None:
    """A pool made, used and shut down inside a function is gone before any collection: every job it ran
    is still published, and its state does not stay behind."""
    name = unique("scoped")
    run(name, 7)
    gc.collect()  # multiprocessing pools sit in reference cycles
    assert not [s for s in _workers_state.live_states() if s.name == name]
    assert counted(metric_reader, name) == (7, 7)
    assert counted(metric_reader, name) == (7, 7)  # published once: a later collection adds nothing


def test_a_pool_per_request_counts_every_job_and_keeps_no_state(instrumented: Any, metric_reader: Any) -> None:
    """A service making a pool per request: 50 requests of 3 jobs are 150 jobs, and after 2 000 more
    pools and a collection, otel-perf holds no more pool state than before them."""
    name = unique("per-request")

    def request(i: int) -> int:
        with otel_perf.name_pool(cf.ThreadPoolExecutor(3), name) as pool:
            return sum(pool.map(work, (i, i + 1, i + 2)))

    assert [request(i) for i in range(50)] == [6 * i + 6 for i in range(50)]
    assert counted(metric_reader, name) == (150, 150)
    registered, series = len(_workers_state.states_by_id), len(JOB_DURATION.all_series())
    for i in range(2000):
        request(i)
    assert len(_workers_state.orphans) > 0  # gone pools wait for the next publication
    assert counted(metric_reader, name) == (6150, 6150)
    assert _workers_state.orphans == []
    assert (len(_workers_state.states_by_id), len(JOB_DURATION.all_series())) == (registered, series)
    assert len(JOB_WAIT.all_series()) <= series


def test_a_pool_whose_last_jobs_finish_after_it_is_dropped_counts_them(instrumented: Any,
                                                                      metric_reader: Any) -> None:
    """shutdown(wait=False) and the last reference dropped while jobs still run: the jobs keep the pool's
    state alive until they end, then it is handed over and published."""
    name = unique("dropped")
    release = threading.Event()
    pool = otel_perf.name_pool(cf.ThreadPoolExecutor(1), name)
    futures = [pool.submit(release.wait, 10) for _ in range(3)]
    pool.shutdown(wait=False)
    del pool
    release.set()
    assert [f.result(10) for f in futures] == [True] * 3
    del futures
    for thread in [t for t in threading.enumerate() if t.name.startswith("ThreadPoolExecutor")]:
        thread.join(10)
    gc.collect()
    assert counted(metric_reader, name) == (3, 3)


# --- shut-down pools ---------------------------------------------------------------------------------


def test_a_shut_down_thread_pool_reports_queue_depth_zero(instrumented: Any, metric_reader: Any) -> None:
    """The wake-up sentinels in a shut-down ThreadPoolExecutor's queue are not jobs: one from shutdown(),
    and at interpreter exit one more per thread (put there as concurrent.futures' exit hook does)."""
    name = unique("shut")
    pool = otel_perf.name_pool(cf.ThreadPoolExecutor(4), name)
    list(pool.map(work, range(40)))
    pool.shutdown(wait=True)
    assert one_value(metric_reader, POOL_QUEUE_DEPTH, name) == 0
    for _ in pool._threads:  # concurrent.futures.thread._python_exit, for this pool
        pool._work_queue.put(None)
    assert pool._work_queue.qsize() > 1
    assert one_value(metric_reader, POOL_QUEUE_DEPTH, name) == 0
    assert one_value(metric_reader, POOL_WORKER_BUSY, name) == 0


def test_a_shut_down_pool_still_draining_reports_the_jobs_left(instrumented: Any, metric_reader: Any) -> None:
    """shutdown(wait=False) with jobs queued: they still run, and they are the queue depth."""
    name = unique("draining")
    release = threading.Event()
    started = threading.Event()

    def blocker() -> None:
        started.set()
        release.wait(10)

    pool = otel_perf.name_pool(cf.ThreadPoolExecutor(1), name)
    futures = [pool.submit(blocker), pool.submit(work, 1), pool.submit(work, 2)]
    assert started.wait(10)
    pool.shutdown(wait=False)
    assert one_value(metric_reader, POOL_QUEUE_DEPTH, name) == 2
    release.set()
    assert [f.result(10) for f in futures] == [None, 2, 4]
    pool.shutdown(wait=True)
    assert one_value(metric_reader, POOL_QUEUE_DEPTH, name) == 0


# --- whose pools are instrumented --------------------------------------------------------------------


def test_a_pool_used_by_a_program_shipped_in_otel_perf_is_the_users(instrumented: Any, span_exporter: Any) -> None:
    """The demo lives in otel_perf.demo: its pools are a user's program's pools, not OpenTelemetry's."""
    code = compile("def use(pool, fn):\n    return pool.submit(fn, 3).result()\n", "agent.py", "exec")
    module: dict[str, Any] = {"__name__": "otel_perf.demo.agent"}
    exec(code, module)  # a function whose frame belongs to a module named otel_perf.demo.agent
    with cf.ThreadPoolExecutor(1, thread_name_prefix="commands") as pool:
        assert module["use"](pool, work) == 6
    assert [s.name for s in job_spans(span_exporter, "commands")] == ["commands work"]


def test_pools_of_the_sdk_are_left_alone(instrumented: Any, tracer_provider: Any, span_exporter: Any,
                                         metric_reader: Any) -> None:
    """The SDK's own pools (resource detection, the concurrent span processor) get no spans or metrics."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ConcurrentMultiSpanProcessor
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    before = counted(metric_reader, "ThreadPoolExecutor")  # the name of the SDK's pools, were they measured
    Resource.create({})
    processor = ConcurrentMultiSpanProcessor(2)  # runs its processors' hooks on its own pool
    processor.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    tracer_provider.add_span_processor(processor)
    tracer_provider.get_tracer("t").start_span("s").end()
    assert processor._executor.__dict__["_otel_perf_pool"].ignored
    processor.shutdown()
    assert counted(metric_reader, "ThreadPoolExecutor") == before
    assert not [s for s in span_exporter.get_finished_spans() if POOL_NAME in s.attributes]


def test_under_contrib_threading_the_users_spans_nest_under_the_job_span(
        instrumented: Any, tracer_provider: Any, span_exporter: Any) -> None:
    """Contrib's threading instrumentation wraps submit outside ours (as under the launcher): the pool is
    the user's, its job is named after the user's function, and a span made in the job is the job
    span's child."""
    from opentelemetry.instrumentation.threading import ThreadingInstrumentor

    def handle(x: int) -> int:
        with tracer_provider.get_tracer("app").start_as_current_span("inner"):
            return x + 1

    ThreadingInstrumentor().instrument()
    try:
        with cf.ThreadPoolExecutor(1, thread_name_prefix="handlers") as pool, \
                tracer_provider.get_tracer("app").start_as_current_span("request") as request:
            assert pool.submit(handle, 1).result() == 2
    finally:
        ThreadingInstrumentor().uninstrument()
    (job,) = job_spans(span_exporter, "handlers")
    (inner,) = [s for s in span_exporter.get_finished_spans() if s.name == "inner"]
    assert job.name == "handlers handle"
    assert job.parent.span_id == request.get_span_context().span_id
    assert inner.parent.span_id == job.context.span_id


# --- suppress_instrumentation() ------------------------------------------------------------------------


def _submit_each_way(pool: Any) -> list[int]:
    if isinstance(pool, cf.Executor):
        return [pool.submit(work, 1).result(), *pool.map(work, [2, 3])]
    return [pool.apply(work, (1,)), *pool.map(work, [2, 3]), *pool.imap(work, [4])]


SUPPRESSIBLE = {
    "ThreadPoolExecutor": lambda: cf.ThreadPoolExecutor(2),
    "ThreadPool": lambda: mpp.ThreadPool(2),
    "ProcessPoolExecutor": pytest.param(lambda: cf.ProcessPoolExecutor(1, mp_context=FORK), marks=needs_fork),
    "Pool": pytest.param(lambda: FORK.Pool(1), marks=needs_fork),
}


@pytest.mark.parametrize("make", list(SUPPRESSIBLE.values()), ids=list(SUPPRESSIBLE))
def test_a_submission_under_suppressed_instrumentation_gets_no_span_and_no_metrics(
        instrumented: Any, span_exporter: Any, metric_reader: Any, make: Any) -> None:
    """The SDK's exporters and processors run with instrumentation suppressed: what they run on a pool
    is not measured (and a pool used only that way is not even registered)."""
    pool = make()
    try:
        with suppress_instrumentation():
            results = _submit_each_way(pool)
        assert results[:3] == [2, 4, 6]
        assert "_otel_perf_pool" not in pool.__dict__
        name = unique("after")
        otel_perf.name_pool(pool, name)
        _submit_each_way(pool)  # not suppressed: measured as usual
    finally:
        if isinstance(pool, cf.Executor):
            pool.shutdown()
        else:
            pool.close()
            pool.join()
    assert not [s for s in span_exporter.get_finished_spans() if s.attributes.get(POOL_NAME) != name
                and POOL_NAME in s.attributes]
    expected = 3 if isinstance(pool, cf.Executor) else 4
    if isinstance(pool, (cf.ThreadPoolExecutor, mpp.ThreadPool)):  # process jobs' spans end in the worker
        assert len(job_spans(span_exporter, name)) == expected
    assert counted(metric_reader, name) == (expected, expected)


def test_a_job_scope_under_suppressed_instrumentation_records_nothing(instrumented: Any, span_exporter: Any,
                                                                      metric_reader: Any) -> None:
    name = unique("custom")
    with suppress_instrumentation(), otel_perf.job(pool=name):
        pass
    assert job_spans(span_exporter, name) == []
    assert counted(metric_reader, name) == (0, 0)
    with otel_perf.job(pool=name):
        pass
    assert len(job_spans(span_exporter, name)) == 1


# --- worker processes' set-up ------------------------------------------------------------------------


def worker_report(_: object = None) -> tuple[int, str | None, bool]:
    """In a worker: (pid, service.name of its configure() handle, whether its tracer provider is the SDK's)."""
    from opentelemetry.sdk.trace import TracerProvider

    from otel_perf._sdk import current_handle

    handle = current_handle()
    return os.getpid(), handle.service_name if handle else None, isinstance(trace.get_tracer_provider(),
                                                                            TracerProvider)


def _payloads_with(marker: bytes, payloads: list[bytes]) -> int:
    return sum(1 for payload in payloads if marker in payload)


@pytest.mark.parametrize("method", ["spawn", pytest.param("forkserver", marks=needs_fork)])
def test_configure_snapshot_travels_once_per_worker_not_with_every_job(
        otel_globals: None, monkeypatch: pytest.MonkeyPatch, method: str) -> None:
    """A configure()d parent's spawn and forkserver workers configure themselves from its snapshot (about
    1.1 KB, OTLP headers and their secrets included), which travels with each worker's start-up, not with
    the jobs sent down the call queue."""
    from multiprocessing.reduction import ForkingPickler

    for signal in ("TRACES", "METRICS", "LOGS"):
        monkeypatch.setenv(f"OTEL_{signal}_EXPORTER", "none")
    secret = f"x-api-key=secret-{os.getpid()}-{method}"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", secret)
    service = unique("snapshot")
    handle = otel_perf.configure(service_name=service)
    sent: list[bytes] = []
    dumps = ForkingPickler.dumps.__func__  # type: ignore[attr-defined]

    def spy(cls: Any, obj: Any, protocol: Any = None) -> Any:
        payload = dumps(cls, obj, protocol)
        sent.append(bytes(payload))
        return payload

    monkeypatch.setattr(ForkingPickler, "dumps", classmethod(spy))
    try:
        with cf.ProcessPoolExecutor(2, mp_context=mp.get_context(method)) as pool:
            reports = [pool.submit(worker_report).result() for _ in range(20)]
            reports += list(pool.map(worker_report, range(10)))
    finally:
        handle.shutdown()
    assert {r[1:] for r in reports} == {(service, True)}  # every worker configured like its parent
    assert os.getpid() not in {r[0] for r in reports}
    assert len(sent) >= 21  # the jobs went through the spied pickler
    assert _payloads_with(secret.encode(), sent) == 0


@needs_fork
def test_a_user_initializer_still_runs_in_every_worker_once(instrumented: Any) -> None:
    """The workers' set-up runs before the pool's own initializer, which runs as it does bare."""
    with cf.ProcessPoolExecutor(2, mp_context=FORK, initializer=_remember, initargs=("ppe",)) as pool:
        seen = set(pool.map(_remembered, range(8)))
    assert seen == {("ppe",)}
    with FORK.Pool(2, initializer=_remember, initargs=("mp",)) as mpool:
        assert set(mpool.map(_remembered, range(8))) == {("mp",)}


_initialized: list[str] = []


def _remember(tag: str) -> None:
    _initialized.append(tag)


def _remembered(_: object) -> tuple[str, ...]:
    return tuple(_initialized)


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
def test_uninstrument_restores_every_patched_method_including_joblib_and_loky(instrument: Any) -> None:
    """uninstrument() puts back the very objects it replaced, also the lazily patched ones."""
    pytest.importorskip("joblib")
    from joblib import parallel
    from joblib.externals.loky import process_executor

    targets = [(mpp.Pool, "_repopulate_pool"), (process_executor.ProcessPoolExecutor, "submit"),
               (process_executor.ProcessPoolExecutor, "map"), (parallel.Parallel, "__call__"),
               (parallel.Parallel, "_dispatch")]
    before = [owner.__dict__[name] for owner, name in targets]
    instrumentor = instrument()
    assert [owner.__dict__[name] is original for (owner, name), original in zip(targets, before, strict=True)] \
        == [False] * len(targets)
    instrumentor.uninstrument()
    assert all(owner.__dict__[name] is original for (owner, name), original in zip(targets, before, strict=True))


# --- forking while the SDK exports ---------------------------------------------------------------------


def _wait_for_child(pid: int, timeout: float) -> int | None:
    """The child's exit status, or None (and the child killed) when it is still running after ``timeout``."""
    import signal
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None


@needs_fork
@pytest.mark.parametrize("stall", [0.4, 3.0], ids=["export-finishes", "export-stuck"])
def test_a_worker_forked_during_an_export_flushes_at_exit_without_hanging(
        otel_globals: None, otlp_receiver: Any, stall: float) -> None:
    """A worker forked while the parent's periodic metric reader was exporting inherited the reader's
    export lock held, and its metrics flush at exit waited for it forever (and so did the pool and the
    program's exit). Forks now wait for the export (bounded); one still stuck after the wait leaves the
    worker without a flush of that signal instead of a hang."""
    import threading as _threading
    import time

    from opentelemetry import metrics
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    from otel_perf.instrumentations import _workers_bootstrap, _workers_fork

    reader = PeriodicExportingMetricReader(
        OTLPMetricExporter(endpoint=otlp_receiver.grpc_endpoint, insecure=True), export_interval_millis=600_000)
    provider = MeterProvider(metric_readers=[reader])
    metrics.set_meter_provider(provider)
    counter = provider.get_meter("t").create_counter("forked.things")
    instrumentor = WorkerPoolInstrumentor()
    instrumentor.instrument(meter_provider=provider, settings=load_settings(pool_spans=False))
    try:
        counter.add(1)
        provider.force_flush()  # the channel is connected: the next export goes straight to the stall
        otlp_receiver.stall_seconds = stall
        exporting = _threading.Thread(target=provider.force_flush)
        exporting.start()
        time.sleep(0.15)  # the export is in the receiver's stall now, holding the reader's export lock
        pid = os.fork()
        if pid == 0:  # the worker: record and flush, as a pool worker does when it ends
            try:
                counter.add(1, {"in": "worker"})
                _workers_bootstrap.flush(metrics=True)
                os._exit(10 + len(_workers_fork.unsafe))
            finally:
                os._exit(1)
        status = _wait_for_child(pid, 25)
        exporting.join(10)
    finally:
        otlp_receiver.stall_seconds = 0
        instrumentor.uninstrument()
        provider.shutdown()
    assert status is not None, "the forked worker hung in its flush"
    if stall < _workers_fork.WAIT:  # the fork waited for the export: the worker flushed its metrics
        assert status == 10
        otlp_receiver.wait_for(lambda r: [p for p in r.metric_points("forked.things")
                                          if p.attributes.get("in") == "worker"], timeout=15)
    else:  # the export outlasted the wait: the worker skipped its metrics flush rather than hang
        assert status == 11


def run_nested_pool(jobs: int) -> int:
    """A job that runs a thread pool of its own (as a nested joblib.Parallel does)."""
    with otel_perf.name_pool(mpp.ThreadPool(2), "nested") as pool:
        return sum(pool.map(work, range(jobs)))


@needs_fork
def test_a_worker_killed_after_a_job_that_ran_its_own_pool_has_published_it(otel_globals: None,
                                                                           otlp_receiver: Any) -> None:
    """A multiprocessing worker owns the pools its jobs make and reports them itself; `with Pool()` kills
    it (SIGTERM) as soon as the block ends, so it flushes its metrics after such a job, before the job's
    result leaves it."""
    from opentelemetry import metrics
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    reader = PeriodicExportingMetricReader(
        OTLPMetricExporter(endpoint=otlp_receiver.grpc_endpoint, insecure=True), export_interval_millis=600_000)
    provider = MeterProvider(metric_readers=[reader])
    metrics.set_meter_provider(provider)
    instrumentor = WorkerPoolInstrumentor()
    instrumentor.instrument(meter_provider=provider, settings=load_settings(pool_spans=False))
    try:
        with FORK.Pool(1) as pool:
            assert pool.apply(run_nested_pool, (5,)) == 20
            worker_pids = [p.pid for p in pool._pool]
        nested = otlp_receiver.wait_for(lambda r: [p for p in r.metric_points(POOL_JOB_DURATION)
                                                   if p.attributes.get(POOL_NAME) == "nested"], timeout=15)
        assert max(p.count for p in nested) == 5
        assert os.getpid() not in worker_pids
    finally:
        instrumentor.uninstrument()
        provider.shutdown()


def test_jobs_finished_before_uninstrument_are_in_the_next_export(instrument: Any, metric_reader: Any) -> None:
    """otel_perf.shutdown() uninstruments before the providers' final export: the jobs the pools finished
    (here a pool gone before any collection) are handed to the SDK first, so that export carries them."""
    instrumentor = instrument()
    name = unique("before-uninstrument")
    _thread_executor(name, 4)
    instrumentor.uninstrument()
    assert counted(metric_reader, name) == (4, 4)
