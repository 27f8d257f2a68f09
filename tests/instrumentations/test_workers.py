"""Worker-pool instrumentation: spans in the submitter's context, pool metrics, and the host program
noticing nothing (transparency tests are in test_workers_transparency.py)."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import itertools
import multiprocessing as mp
import multiprocessing.pool as mpp
import os
import pickle
import queue
import sys
import threading
import time
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.trace import StatusCode

import otel_perf
from otel_perf._config import load_settings
from otel_perf._semconv import (
    CODE_FUNCTION_NAME,
    ERROR_TYPE,
    JOB_OUTCOME,
    JOB_WAIT_DURATION,
    POOL_JOB_DURATION,
    POOL_JOB_REJECTED,
    POOL_JOB_RETRIES,
    POOL_JOB_WAIT_DURATION,
    POOL_KIND,
    POOL_NAME,
    POOL_QUEUE_DEPTH,
    POOL_WORKER_BUSY,
    POOL_WORKER_LIMIT,
    POOL_WORKER_MEMORY_MAX,
)
from otel_perf.instrumentations import _workers_joblog, _workers_state, _workers_thread
from otel_perf.instrumentations._workers_trampoline import job_info, process_job, trampoline
from otel_perf.instrumentations.workers import WorkerPoolInstrumentor
from otel_perf.testing import metric_points

FORK = mp.get_context("fork") if sys.platform == "linux" else None
needs_fork = pytest.mark.skipif(FORK is None, reason="fork start method")
_names = itertools.count()


def unique(prefix: str) -> str:
    return f"{prefix}-{next(_names)}"


def work(x: int) -> int:
    return x * 2


def add(x: int, y: int) -> int:
    return x + y


def fail(x: int) -> int:
    raise ValueError(f"job {x} failed")


def current_trace_id(_: object = None) -> int:
    return trace.get_current_span().get_span_context().trace_id


def points(reader: Any, name: str, pool: str, **attrs: Any) -> list[Any]:
    return [p for p in metric_points(reader, name) if p.attributes.get(POOL_NAME) == pool
            and all(p.attributes.get(k) == v for k, v in attrs.items())]


def one_value(reader: Any, name: str, pool: str) -> Any:
    found = points(reader, name, pool)
    assert len(found) == 1, (name, pool, found)
    return found[0].value


def job_spans(exporter: Any, pool: str) -> list[Any]:
    return [s for s in exporter.get_finished_spans() if s.attributes.get(POOL_NAME) == pool]


# --- spans and context ---------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [lambda: cf.ThreadPoolExecutor(2), lambda: mpp.ThreadPool(2)],
                         ids=["ThreadPoolExecutor", "ThreadPool"])
def test_thread_job_spans_are_children_of_each_submitter_in_a_reused_pool(
        instrumented: Any, tracer_provider: Any, span_exporter: Any, make: Any) -> None:
    """A pool reused across two requests puts each request's jobs under that request's span."""
    pool = otel_perf.name_pool(make(), unique("reused"))
    name = _workers_state.state_for(pool).name
    tracer = tracer_provider.get_tracer("test")
    parents = []
    for request in range(2):
        with tracer.start_as_current_span(f"request-{request}") as span:
            parents.append(span.get_span_context())
            if isinstance(pool, cf.Executor):
                assert [f.result() for f in [pool.submit(work, i) for i in range(3)]] == [0, 2, 4]
            else:
                assert pool.map(work, range(3)) == [0, 2, 4]
    if isinstance(pool, cf.Executor):
        pool.shutdown()
    else:
        pool.close()
        pool.join()
    spans = job_spans(span_exporter, name)
    assert len(spans) == 6
    for request, parent in enumerate(parents):
        mine = [s for s in spans if s.parent.span_id == parent.span_id]
        assert len(mine) == 3, request
        assert all(s.context.trace_id == parent.trace_id for s in mine)
    span = spans[0]
    assert span.name == f"{name} work"
    assert span.kind == trace.SpanKind.INTERNAL
    assert span.attributes[POOL_KIND] == "thread"
    assert span.attributes[CODE_FUNCTION_NAME] == f"{__name__}.work"
    assert span.attributes[JOB_WAIT_DURATION] >= 0
    assert span.status.status_code == StatusCode.UNSET


def test_job_sees_its_own_span_as_current(instrumented: Any, span_exporter: Any) -> None:
    """Inside the job, the current span is the job's span (user spans nest under it)."""
    with cf.ThreadPoolExecutor(1) as pool:
        name = _workers_state.state_for(otel_perf.name_pool(pool, unique("current"))).name
        inner = pool.submit(lambda: trace.get_current_span().get_span_context().span_id).result()
    (span,) = job_spans(span_exporter, name)
    assert span.context.span_id == inner


def test_failing_thread_job_span_has_error_status_and_type(instrumented: Any, span_exporter: Any) -> None:
    pool = otel_perf.name_pool(cf.ThreadPoolExecutor(1), unique("failing"))
    with pool, pytest.raises(ValueError, match="job 3 failed"):
        pool.submit(fail, 3).result()
    (span,) = job_spans(span_exporter, _workers_state.state_for(pool).name)
    assert span.status.status_code == StatusCode.ERROR
    assert span.attributes[ERROR_TYPE] == "ValueError"
    assert [e.name for e in span.events] == ["exception"]


def test_spans_off_keeps_metrics(instrument: Any, span_exporter: Any, metric_reader: Any) -> None:
    """OTEL_PERF_POOL_SPANS=false: no job spans, but every job is still counted."""
    instrument(pool_spans=False)
    name = unique("nospans")
    with otel_perf.name_pool(cf.ThreadPoolExecutor(2), name) as pool:
        list(pool.map(work, range(5)))
    assert job_spans(span_exporter, name) == []
    (point,) = points(metric_reader, POOL_JOB_DURATION, name)
    assert point.count == 5


def test_pools_of_opentelemetry_itself_are_left_alone(instrumented: Any, span_exporter: Any) -> None:
    """The SDK detects resources on a ThreadPoolExecutor: no spans or metrics for that pool."""
    from opentelemetry.sdk.resources import Resource

    Resource.create({})
    assert not [s for s in span_exporter.get_finished_spans() if POOL_NAME in s.attributes]
    assert all(not state.ignored for state in _workers_state.live_states())


# --- metrics -------------------------------------------------------------------------------------------


def test_thread_pool_metrics_read_queue_busy_and_limit_while_jobs_wait(
        instrumented: Any, metric_reader: Any) -> None:
    """One worker blocked on a job and two jobs queued: busy 1, depth 2, limit 1; afterwards 0, 0, 1."""
    name = unique("blocked")
    release = threading.Event()
    started = threading.Event()

    def blocker() -> None:
        started.set()
        release.wait(10)

    pool = otel_perf.name_pool(cf.ThreadPoolExecutor(1, thread_name_prefix="ignored"), name)
    futures = [pool.submit(blocker), pool.submit(work, 1), pool.submit(work, 2)]
    assert started.wait(10)
    assert one_value(metric_reader, POOL_WORKER_BUSY, name) == 1
    assert one_value(metric_reader, POOL_QUEUE_DEPTH, name) == 2
    assert one_value(metric_reader, POOL_WORKER_LIMIT, name) == 1
    release.set()
    assert [f.result(10) for f in futures] == [None, 2, 4]
    pool.shutdown()
    assert one_value(metric_reader, POOL_WORKER_BUSY, name) == 0
    assert one_value(metric_reader, POOL_QUEUE_DEPTH, name) == 0
    (waits,) = points(metric_reader, POOL_JOB_WAIT_DURATION, name)
    (runs,) = points(metric_reader, POOL_JOB_DURATION, name, **{JOB_OUTCOME: "ok"})
    assert waits.count == runs.count == 3


def test_job_duration_counts_outcomes_and_error_types(instrumented: Any, metric_reader: Any) -> None:
    name = unique("outcomes")
    with otel_perf.name_pool(cf.ThreadPoolExecutor(2), name) as pool:
        futures = [pool.submit(work, 1), pool.submit(fail, 2), pool.submit(fail, 3), pool.submit(work, 4)]
        cf.wait(futures)
    ok = points(metric_reader, POOL_JOB_DURATION, name, **{JOB_OUTCOME: "ok"})
    errors = points(metric_reader, POOL_JOB_DURATION, name, **{JOB_OUTCOME: "error"})
    assert [p.count for p in ok] == [2]
    assert [(p.count, p.attributes[ERROR_TYPE]) for p in errors] == [(2, "ValueError")]
    assert {p.attributes[POOL_KIND] for p in ok + errors} == {"thread"}


def test_many_jobs_from_many_threads_are_all_counted(instrumented: Any, metric_reader: Any) -> None:
    """Jobs are logged raw and folded in bulk (every FOLD_AT jobs and at each collection): with several
    workers folding while others log, and a collection in the middle, every job is counted exactly once,
    with its outcome, and busy workers come back to zero."""
    name = unique("many")
    jobs = 3 * _workers_joblog.FOLD_AT + 17
    with otel_perf.name_pool(cf.ThreadPoolExecutor(4), name) as pool:
        first = [pool.submit(fail if i % 10 == 0 else work, i) for i in range(jobs // 2)]
        metric_points(metric_reader, POOL_JOB_WAIT_DURATION)  # a collection while jobs run
        rest = [pool.submit(fail if i % 10 == 0 else work, i) for i in range(jobs // 2, jobs)]
        cf.wait(first + rest)
    failed = len(range(0, jobs, 10))
    (waits,) = points(metric_reader, POOL_JOB_WAIT_DURATION, name)
    (ok,) = points(metric_reader, POOL_JOB_DURATION, name, **{JOB_OUTCOME: "ok"})
    (errors,) = points(metric_reader, POOL_JOB_DURATION, name, **{JOB_OUTCOME: "error"})
    assert (waits.count, ok.count, errors.count) == (jobs, jobs - failed, failed)
    assert errors.attributes[ERROR_TYPE] == "ValueError"
    assert ok.min >= 0 and waits.min >= 0 and sum(ok.bucket_counts) == ok.count
    assert one_value(metric_reader, POOL_WORKER_BUSY, name) == 0


def test_log_of_failing_jobs_stays_bounded_without_collections(instrumented: Any, metric_reader: Any,
                                                               monkeypatch: Any) -> None:
    """A pool whose jobs all fail still folds its log at its bound (FOLD_BUSY_AT entries, made small here)
    with no collection, and counts every failure."""
    bound = 64
    monkeypatch.setattr(_workers_thread, "FOLD_BUSY_AT", bound)
    name = unique("failing")
    jobs = bound + 40
    with otel_perf.name_pool(cf.ThreadPoolExecutor(2), name) as pool:
        cf.wait([pool.submit(fail, i) for i in range(jobs)])
        assert len(_workers_state.state_for(pool).done) < bound
    (errors,) = points(metric_reader, POOL_JOB_DURATION, name, **{JOB_OUTCOME: "error"})
    assert errors.count == jobs


def test_pool_names_follow_the_naming_rules(instrumented: Any, span_exporter: Any) -> None:
    """name_pool wins, else a thread_name_prefix the user gave, else the class name (never the generated
    ThreadPoolExecutor-N)."""
    with cf.ThreadPoolExecutor(1, thread_name_prefix="fetchers") as given, \
            cf.ThreadPoolExecutor(1) as generated, \
            otel_perf.name_pool(cf.ThreadPoolExecutor(1, thread_name_prefix="x"), "named") as named:
        for pool in (given, generated, named):
            pool.submit(work, 1).result()
    names = {_workers_state.state_for(p).name for p in (given, generated, named)}
    assert names == {"fetchers", "ThreadPoolExecutor", "named"}


def test_rejected_submission_is_counted_and_raises_as_before(instrumented: Any, metric_reader: Any) -> None:
    name = unique("rejected")
    pool = otel_perf.name_pool(cf.ThreadPoolExecutor(1), name)
    pool.shutdown()
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        pool.submit(work, 1)
    assert one_value(metric_reader, POOL_JOB_REJECTED, name) == 1


@needs_fork
def test_process_pool_jobs_are_counted_by_the_owner(instrumented: Any, metric_reader: Any) -> None:
    """ProcessPoolExecutor jobs (map items with chunksize, failures) are recorded in the parent; worker
    memory and the limit are read from the pool."""
    name = unique("ppe")
    with otel_perf.name_pool(cf.ProcessPoolExecutor(2, mp_context=FORK), name) as pool:
        assert list(pool.map(work, range(7), chunksize=3)) == [x * 2 for x in range(7)]
        with pytest.raises(ValueError):
            pool.submit(fail, 1).result()
        assert one_value(metric_reader, POOL_WORKER_LIMIT, name) == 2
        assert one_value(metric_reader, POOL_WORKER_MEMORY_MAX, name) > 1 << 20
        assert one_value(metric_reader, POOL_QUEUE_DEPTH, name) == 0
        assert one_value(metric_reader, POOL_WORKER_BUSY, name) == 0
    ok = points(metric_reader, POOL_JOB_DURATION, name, **{JOB_OUTCOME: "ok"})
    errors = points(metric_reader, POOL_JOB_DURATION, name, **{JOB_OUTCOME: "error"})
    assert [p.count for p in ok] == [7]
    assert [(p.count, p.attributes[ERROR_TYPE]) for p in errors] == [(1, "ValueError")]
    assert [p.count for p in points(metric_reader, POOL_JOB_WAIT_DURATION, name)] == [8]
    assert {p.attributes[POOL_KIND] for p in ok} == {"process"}


@needs_fork
def test_multiprocessing_pool_counts_every_item_of_every_api(instrumented: Any, metric_reader: Any) -> None:
    """apply/apply_async/map/map_async/starmap/imap/imap_unordered: one job per call of the function."""
    name = unique("mpool")
    with otel_perf.name_pool(FORK.Pool(2), name) as pool:
        assert pool.apply(work, (1,)) == 2
        assert pool.apply_async(work, (2,)).get(10) == 4
        assert pool.map(work, range(5), chunksize=2) == [0, 2, 4, 6, 8]
        assert pool.map_async(work, range(3)).get(10) == [0, 2, 4]
        assert pool.starmap(add, [(1, 2), (3, 4)]) == [3, 7]
        assert list(pool.imap(work, iter(range(4)), chunksize=3)) == [0, 2, 4, 6]
        assert sorted(pool.imap_unordered(work, range(3))) == [0, 2, 4]
        errors: list[BaseException] = []
        pool.apply_async(fail, (1,), error_callback=errors.append).wait(10)
        assert [str(e) for e in errors] == ["job 1 failed"]
        assert one_value(metric_reader, POOL_WORKER_LIMIT, name) == 2
        assert one_value(metric_reader, POOL_QUEUE_DEPTH, name) == 0
        assert one_value(metric_reader, POOL_WORKER_MEMORY_MAX, name) > 1 << 20
    (ok,) = points(metric_reader, POOL_JOB_DURATION, name, **{JOB_OUTCOME: "ok"})
    assert ok.count == 1 + 1 + 5 + 3 + 2 + 4 + 3
    (error,) = points(metric_reader, POOL_JOB_DURATION, name, **{JOB_OUTCOME: "error"})
    assert error.count == 1


def test_multiprocessing_thread_pool_depth_and_busy(instrumented: Any, metric_reader: Any) -> None:
    name = unique("mpthreads")
    release = threading.Event()
    started = threading.Event()

    def blocker(_: int) -> None:
        started.set()
        release.wait(10)

    with otel_perf.name_pool(mpp.ThreadPool(1), name) as pool:
        result = pool.map_async(blocker, range(3), chunksize=1)
        assert started.wait(10)
        assert one_value(metric_reader, POOL_WORKER_BUSY, name) == 1
        assert one_value(metric_reader, POOL_QUEUE_DEPTH, name) == 2
        release.set()
        result.get(10)
        assert one_value(metric_reader, POOL_QUEUE_DEPTH, name) == 0
        assert one_value(metric_reader, POOL_WORKER_BUSY, name) == 0


# --- user pools ----------------------------------------------------------------------------------------


def test_job_context_manager_records_span_metrics_and_retries(
        instrumented: Any, span_exporter: Any, metric_reader: Any) -> None:
    name = unique("ingest")
    with otel_perf.job(pool=name, attempt=1, enqueued_at=time.monotonic()):
        pass
    with pytest.raises(KeyError), otel_perf.job(pool=name, name="load", attempt=2):
        raise KeyError("missing")
    spans = job_spans(span_exporter, name)
    assert [s.name for s in spans] == [f"{name} job", f"{name} load"]
    assert spans[0].attributes[POOL_KIND] == "custom"
    assert JOB_WAIT_DURATION in spans[0].attributes
    assert spans[1].status.status_code == StatusCode.ERROR
    assert spans[1].attributes[ERROR_TYPE] == "KeyError"
    assert one_value(metric_reader, POOL_JOB_RETRIES, name) == 1
    assert [p.count for p in points(metric_reader, POOL_JOB_DURATION, name)] == [1, 1]
    assert [p.count for p in points(metric_reader, POOL_JOB_WAIT_DURATION, name)] == [1]


def test_job_decorator_works_for_functions_and_coroutines(instrumented: Any, span_exporter: Any) -> None:
    name = unique("decorated")

    @otel_perf.job(pool=name)
    def handle(x: int) -> int:
        """Handle x."""
        return x + 1

    @otel_perf.job(pool=name, attempt=3)
    async def handle_async(x: int) -> int:
        return x + 2

    assert handle(1) == 2 and handle(2) == 3
    assert asyncio.run(handle_async(1)) == 3
    assert handle.__doc__ == "Handle x." and handle.__name__ == "handle"
    spans = job_spans(span_exporter, name)
    assert [s.name for s in spans] == [f"{name} handle"] * 2 + [f"{name} handle_async"]
    assert spans[0].attributes[CODE_FUNCTION_NAME].endswith("handle")


def test_track_queue_reports_depth_of_queue_and_asyncio_queue(instrumented: Any, metric_reader: Any) -> None:
    name = unique("queues")
    q: queue.Queue[int] = otel_perf.track_queue(queue.Queue(), name)
    for i in range(3):
        q.put(i)

    async def fill() -> asyncio.Queue[int]:
        aq: asyncio.Queue[int] = asyncio.Queue()
        aq.put_nowait(1)
        return aq

    aq = otel_perf.track_queue(asyncio.run(fill()), name)
    assert one_value(metric_reader, POOL_QUEUE_DEPTH, name) == 4
    q.get()
    assert one_value(metric_reader, POOL_QUEUE_DEPTH, name) == 3
    del aq
    assert one_value(metric_reader, POOL_QUEUE_DEPTH, name) == 2


# --- instrumentor life cycle ---------------------------------------------------------------------------


def test_uninstrument_restores_the_original_methods() -> None:
    """After uninstrument() every patched attribute is the very same object as before."""
    from concurrent.futures import _base, process, thread

    before = (thread.ThreadPoolExecutor.submit, process.ProcessPoolExecutor.submit,
              process.ProcessPoolExecutor.map, _base.Future.cancel, mpp.Pool.apply_async, mpp.Pool._map_async,
              mpp.Pool.imap, mpp.Pool.imap_unordered)
    instrumentor = WorkerPoolInstrumentor()
    instrumentor.instrument()
    try:
        assert thread.ThreadPoolExecutor.submit is not before[0]
        assert thread.ThreadPoolExecutor.submit.__wrapped__ is before[0]
    finally:
        instrumentor.uninstrument()
    after = (thread.ThreadPoolExecutor.submit, process.ProcessPoolExecutor.submit,
             process.ProcessPoolExecutor.map, _base.Future.cancel, mpp.Pool.apply_async, mpp.Pool._map_async,
             mpp.Pool.imap, mpp.Pool.imap_unordered)
    assert all(a is b for a, b in zip(before, after, strict=False))


def test_instrumenting_twice_records_each_job_once(tracer_provider: Any, meter_provider: Any,
                                                   span_exporter: Any, metric_reader: Any) -> None:
    instrumentor = WorkerPoolInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
    instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
    try:
        name = unique("twice")
        with otel_perf.name_pool(cf.ThreadPoolExecutor(1), name) as pool:
            pool.submit(work, 1).result()
        assert len(job_spans(span_exporter, name)) == 1
        assert [p.count for p in points(metric_reader, POOL_JOB_DURATION, name)] == [1]
    finally:
        instrumentor.uninstrument()


def test_after_uninstrument_pools_run_bare(instrumented: Any, span_exporter: Any) -> None:
    """A bound submit captured while instrumented passes straight through after uninstrument()."""
    pool = cf.ThreadPoolExecutor(1)
    submit = pool.submit
    instrumented.uninstrument()
    assert submit(work, 2).result() == 4
    assert pool.submit(work, 3).result() == 6
    pool.shutdown()
    assert not [s for s in span_exporter.get_finished_spans() if POOL_NAME in s.attributes]


def test_works_together_with_contrib_threading_instrumentation(
        instrumented: Any, tracer_provider: Any, span_exporter: Any) -> None:
    """Contrib's ThreadingInstrumentor wraps submit too (with wrapt): both compose, parents stay right."""
    from opentelemetry.instrumentation.threading import ThreadingInstrumentor

    ThreadingInstrumentor().instrument()
    try:
        name = unique("contrib")
        tracer = tracer_provider.get_tracer("t")
        with otel_perf.name_pool(cf.ThreadPoolExecutor(1), name) as pool, \
                tracer.start_as_current_span("parent") as parent:
            assert pool.submit(current_trace_id).result() == parent.get_span_context().trace_id
        (span,) = job_spans(span_exporter, name)
        assert span.parent.span_id == parent.get_span_context().span_id
    finally:
        ThreadingInstrumentor().uninstrument()


def test_process_job_pickles_and_runs_as_a_plain_call_in_its_owner(instrumented: Any) -> None:
    """The process-pool job (trampoline + info) pickles, the user's function by reference."""
    with cf.ThreadPoolExecutor(1) as pool:
        job = process_job(_workers_state.state_for(pool), work)
    clone = pickle.loads(pickle.dumps(job))
    assert clone.func is trampoline and clone.args[0] is work
    assert clone(21) == 42  # in the owning process it is a plain call


def _call_item_reducer() -> Any:
    from concurrent.futures.process import _CallItem
    from multiprocessing.reduction import ForkingPickler

    return ForkingPickler._extra_reducers.get(_CallItem)


def test_process_call_items_pickle_compact_while_instrumented(instrument: Any) -> None:
    """While instrumented, a job's call item crosses to the worker as ``_call_item(...)`` (one global, no
    state dict) and becomes the very item the stdlib sends; any other item pickles byte for byte as
    without otel-perf; uninstrument() removes the reducer."""
    from concurrent.futures.process import _CallItem
    from multiprocessing.reduction import ForkingPickler

    plain = _CallItem(7, work, (3,), {})
    stdlib_bytes = bytes(ForkingPickler.dumps(plain))
    instrumentor = instrument()
    with cf.ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        job = pool.submit(work, 5)  # applies the patch (and so the reducer)
        info = job_info(_workers_state.state_for(pool))
        assert job.result() == 10
    ours = _CallItem(8, trampoline, (add, info, 1), {"y": 2})
    data = bytes(ForkingPickler.dumps(ours))
    assert b"_call_item" in data and b"_CallItem" not in data
    clone = pickle.loads(data)
    assert type(clone) is _CallItem
    assert (clone.work_id, clone.fn, clone.args, clone.kwargs) == (8, trampoline, (add, info, 1), {"y": 2})
    assert clone.fn(*clone.args, **clone.kwargs) == 3
    assert bytes(ForkingPickler.dumps(plain)) == stdlib_bytes
    instrumentor.uninstrument()
    assert _call_item_reducer() is None
    assert bytes(ForkingPickler.dumps(ours)).count(b"_CallItem") == 1  # the stdlib's way again


def test_a_result_item_pickles_compact_once_and_unpickles_as_the_stdlib_item(instrumented: Any) -> None:
    """In a worker, the result item carrying a job's envelope goes back as ``_result_item(...)``: in the
    owner it becomes the stdlib's item with the job's own result (and ``exit_pid``) and logs the timings.
    The reducer removes itself, so the next result item pickles byte for byte the stdlib's way."""
    from concurrent.futures.process import _ResultItem
    from multiprocessing.reduction import ForkingPickler

    from otel_perf.instrumentations import _workers_pickle as run

    plain = _ResultItem(4, result=5)
    stdlib_bytes = bytes(ForkingPickler.dumps(plain))
    reducers = ForkingPickler._extra_reducers
    saved = run.compact_results
    run.compact_results = (reducers, _ResultItem)  # as a set-up worker has it
    try:
        with cf.ThreadPoolExecutor(1) as pool:
            state = _workers_state.state_for(pool)
        envelope = run.Envelope((run.deliver, ([1, 2], os.getpid(), state.id, (0.5, 0.25))))
        reducers.setdefault(_ResultItem, run.reduce_result_item)  # what the trampoline does
        item = _ResultItem(3, result=envelope)
        if sys.version_info >= (3, 11):
            item.exit_pid = 99  # type: ignore[attr-defined]
        data = bytes(ForkingPickler.dumps(item))
        assert _ResultItem not in reducers
        assert b"_result_item" in data and b"_ResultItem" not in data
        clone = pickle.loads(data)
        expected = _ResultItem(3, result=[1, 2])
        if sys.version_info >= (3, 11):
            expected.exit_pid = 99  # type: ignore[attr-defined]
        assert type(clone) is _ResultItem and vars(clone) == vars(expected)
        assert state.done[-1] == (0.5, 0.25)  # logged by the owner
        assert bytes(ForkingPickler.dumps(plain)) == stdlib_bytes
    finally:
        run.compact_results = saved
        if reducers.get(_ResultItem) is run.reduce_result_item:
            del reducers[_ResultItem]


def test_a_call_item_reducer_registered_by_someone_else_is_kept(instrument: Any) -> None:
    from concurrent.futures.process import _CallItem
    from multiprocessing.reduction import ForkingPickler

    def theirs(item: Any) -> Any:
        return item.__reduce_ex__(2)

    ForkingPickler.register(_CallItem, theirs)
    try:
        instrumentor = instrument()
        with cf.ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
            assert pool.submit(work, 4).result() == 8
            assert _call_item_reducer() is theirs
        instrumentor.uninstrument()
        assert _call_item_reducer() is theirs
    finally:
        ForkingPickler._extra_reducers.pop(_CallItem, None)


@needs_fork
def test_forked_child_reports_only_its_own_pools(instrumented: Any) -> None:
    """After fork, the parent's pools are not reported again by the child (docs/workers.md, "Worker processes")."""
    with otel_perf.name_pool(cf.ThreadPoolExecutor(1), unique("parent-pool")) as pool:
        pool.submit(work, 1).result()
        assert _workers_state.live_states()
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            os.close(read)
            os.write(write, str(len(_workers_state.live_states())).encode())
            os._exit(0)
        os.close(write)
        reported = os.read(read, 16)
        os.close(read)
        os.waitpid(pid, 0)
    assert reported == b"0"


@needs_fork
def test_multiprocessing_pool_rejection_is_counted_and_raises_as_before(instrumented: Any,
                                                                      metric_reader: Any) -> None:
    name = unique("closed")
    pool = otel_perf.name_pool(FORK.Pool(1), name)
    pool.close()
    for call in (lambda: pool.apply_async(work, (1,)), lambda: pool.map(work, [1]),
                 lambda: pool.imap(work, [1])):
        with pytest.raises(ValueError, match="Pool not running"):
            call()
    pool.join()
    assert one_value(metric_reader, POOL_JOB_REJECTED, name) == 3


def test_process_context_carrier_keeps_trace_state_and_baggage(tracer_provider: Any) -> None:
    """The carrier sent to worker processes: a bare traceparent, or the full propagation when the context
    has trace state or baggage; the worker rebuilds the same parent either way."""
    from opentelemetry import baggage
    from opentelemetry import context as otel_context
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

    from otel_perf.instrumentations._workers_carrier import carrier_of as _carrier
    from otel_perf.instrumentations._workers_carrier import context_from as _context_from

    tracer = tracer_provider.get_tracer("t")
    with tracer.start_as_current_span("plain") as span:
        carrier = _carrier()
        assert isinstance(carrier, str)
        rebuilt = trace.get_current_span(_context_from(carrier)).get_span_context()
        assert (rebuilt.trace_id, rebuilt.span_id, rebuilt.is_remote) == (
            span.get_span_context().trace_id, span.get_span_context().span_id, True)
    stated = SpanContext(0x1234, 0x5678, is_remote=False, trace_flags=TraceFlags(1),
                         trace_state=TraceState([("vendor", "v1")]))
    ctx = baggage.set_baggage("tenant", "t1", trace.set_span_in_context(NonRecordingSpan(stated)))
    token = otel_context.attach(ctx)
    try:
        carrier = _carrier()
    finally:
        otel_context.detach(token)
    assert isinstance(carrier, dict)
    rebuilt_ctx = _context_from(carrier)
    rebuilt = trace.get_current_span(rebuilt_ctx).get_span_context()
    assert (rebuilt.trace_id, rebuilt.span_id, rebuilt.trace_state.get("vendor")) == (0x1234, 0x5678, "v1")
    assert baggage.get_baggage("tenant", rebuilt_ctx) == "t1"
    assert _carrier() is None  # no span: nothing to carry


@needs_fork
def test_failing_item_of_a_chunk_still_counts_the_items_that_ran(instrumented: Any,
                                                                metric_reader: Any) -> None:
    """map with chunksize: items before a failing one ran (counted ok), the failing one counts as an
    error, items after it never ran; the multiprocessing pool's busy/depth return to 0."""
    makers = ((lambda: cf.ProcessPoolExecutor(1, mp_context=FORK), "ppe"), (lambda: FORK.Pool(1), "mp"))
    for make, kind in makers:
        name = unique(f"chunk-{kind}")
        with otel_perf.name_pool(make(), name) as pool:
            with pytest.raises(ValueError):
                list(pool.map(fail_on_three, range(6), chunksize=6))
            assert one_value(metric_reader, POOL_WORKER_BUSY, name) == 0
            assert one_value(metric_reader, POOL_QUEUE_DEPTH, name) == 0
        ok = points(metric_reader, POOL_JOB_DURATION, name, **{JOB_OUTCOME: "ok"})
        errors = points(metric_reader, POOL_JOB_DURATION, name, **{JOB_OUTCOME: "error"})
        assert [p.count for p in ok] == [3], kind
        assert [p.count for p in errors] == [1], kind


def fail_on_three(x: int) -> int:
    if x == 3:
        raise ValueError("three")
    return x


def _make_span(_: object = None) -> int:
    trace.get_tracer("job").start_span("inner").end()
    return os.getpid()


@needs_fork
def test_terminated_multiprocessing_worker_loses_nothing_of_finished_jobs(otel_globals: None,
                                                                        otlp_receiver: Any) -> None:
    """`with Pool()` terminates its workers as soon as the last result is in: what the jobs recorded has
    already been exported (here with a batch timer that would never fire)."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(
        OTLPSpanExporter(endpoint=f"{otlp_receiver.http_endpoint}/v1/traces"), schedule_delay_millis=600_000))
    trace.set_tracer_provider(provider)
    instrumentor = WorkerPoolInstrumentor()
    instrumentor.instrument(tracer_provider=provider, settings=load_settings(pool_spans=False))
    try:
        with FORK.Pool(2) as pool:
            pids = pool.map(_make_span, range(4), chunksize=1)
        assert os.getpid() not in pids
        otlp_receiver.wait_for(lambda r: len([s for s in r.spans() if s.name == "inner"]) == 4, timeout=15)
    finally:
        instrumentor.uninstrument()
        provider.shutdown()
