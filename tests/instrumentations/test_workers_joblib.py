"""joblib: every task is a pool job named after its function, with the loky (default), threading and
multiprocessing backends, in the context of the span that called ``Parallel``."""

from __future__ import annotations

import os
import sys
from typing import Any

import pytest

import otel_perf
from otel_perf._config import load_settings
from otel_perf._semconv import (
    CODE_FUNCTION_NAME,
    ERROR_TYPE,
    JOB_OUTCOME,
    POOL_JOB_DURATION,
    POOL_JOB_WAIT_DURATION,
    POOL_KIND,
    POOL_NAME,
    POOL_WORKER_LIMIT,
)
from otel_perf.instrumentations.workers import WorkerPoolInstrumentor
from otel_perf.testing import metric_points

joblib = pytest.importorskip("joblib")
pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="loky workers on Linux")


def square(x: int) -> int:
    return x * x


def square_or_fail(x: int) -> int:
    if x == 5:
        raise KeyError(x)
    return x * x


def traced_square(x: int) -> tuple[int, int, int]:
    """(x squared, this process's pid, the trace id current in the task)."""
    from opentelemetry import trace

    return x * x, os.getpid(), trace.get_current_span().get_span_context().trace_id


@pytest.fixture
def instrumented(tracer_provider: Any, meter_provider: Any) -> Any:
    instrumentor = WorkerPoolInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider,
                            settings=load_settings())
    yield instrumentor
    instrumentor.uninstrument()


def jobs_of(reader: Any, pool: str) -> dict[str, int]:
    """{outcome: jobs} in otel_perf.pool.job.duration of ``pool``, and "waited": jobs in the wait histogram."""
    data = reader.get_metrics_data()
    out: dict[str, int] = {}
    for point in metric_points(data, POOL_JOB_DURATION):
        if point.attributes.get(POOL_NAME) == pool:
            key = point.attributes[JOB_OUTCOME]
            out[key] = out.get(key, 0) + point.count
    out["waited"] = sum(p.count for p in metric_points(data, POOL_JOB_WAIT_DURATION)
                        if p.attributes.get(POOL_NAME) == pool)
    return out


def test_threading_backend_tasks_are_jobs_named_after_their_function(
        instrumented: Any, tracer_provider: Any, span_exporter: Any, metric_reader: Any) -> None:
    """Parallel(backend="threading") runs on a multiprocessing ThreadPool: one job and one span per task,
    named after the task's function, each a child of the span that called Parallel, also for the tasks
    joblib dispatches from the pool's result thread."""
    before = jobs_of(metric_reader, "ThreadPool").get("ok", 0)
    with tracer_provider.get_tracer("app").start_as_current_span("request") as request:
        results = joblib.Parallel(n_jobs=2, backend="threading", batch_size=3)(
            joblib.delayed(traced_square)(i) for i in range(40))
    assert [r[0] for r in results] == [i * i for i in range(40)]
    assert {r[2] for r in results} == {request.get_span_context().trace_id}
    spans = [s for s in span_exporter.get_finished_spans() if s.attributes.get(POOL_NAME) == "ThreadPool"]
    assert len(spans) == 40
    assert {s.name for s in spans} == {"ThreadPool traced_square"}
    assert {s.attributes[CODE_FUNCTION_NAME] for s in spans} == {f"{__name__}.traced_square"}
    assert {s.parent.span_id for s in spans} == {request.get_span_context().span_id}
    assert jobs_of(metric_reader, "ThreadPool")["ok"] - before == 40


def test_loky_backend_tasks_are_process_jobs_counted_by_the_owner(instrumented: Any, metric_reader: Any) -> None:
    """joblib's default backend, loky, runs its own executor: each task is a job of the pool "loky",
    counted in the calling process (also the failing task, with its error.type), run in a worker process."""
    before = jobs_of(metric_reader, "loky")
    results = joblib.Parallel(n_jobs=2)(joblib.delayed(traced_square)(i) for i in range(30))
    assert [r[0] for r in results] == [i * i for i in range(30)]
    assert os.getpid() not in {r[1] for r in results}
    with pytest.raises(KeyError):
        joblib.Parallel(n_jobs=2, batch_size=2)(joblib.delayed(square_or_fail)(i) for i in range(8))
    after = jobs_of(metric_reader, "loky")
    assert after.get("error", 0) - before.get("error", 0) == 1
    # Tasks after the failing one may or may not have run when joblib stops: each one that ran counted.
    assert 30 + 5 <= after["ok"] - before.get("ok", 0) <= 30 + 7
    assert after["waited"] - before.get("waited", 0) == after["ok"] + after["error"] - before.get("ok", 0) \
        - before.get("error", 0)
    errors = [p for p in metric_points(metric_reader, POOL_JOB_DURATION)
              if p.attributes.get(POOL_NAME) == "loky" and p.attributes[JOB_OUTCOME] == "error"]
    assert {p.attributes[ERROR_TYPE] for p in errors} == {"KeyError"}
    assert {p.attributes[POOL_KIND] for p in errors} == {"process"}
    limits = [p.value for p in metric_points(metric_reader, POOL_WORKER_LIMIT) if p.attributes.get(POOL_NAME) == "loky"]
    assert limits == [2]


def test_multiprocessing_backend_tasks_are_jobs(instrumented: Any, metric_reader: Any) -> None:
    before = jobs_of(metric_reader, "MemmappingPool").get("ok", 0)
    results = joblib.Parallel(n_jobs=2, backend="multiprocessing")(joblib.delayed(square)(i) for i in range(25))
    assert results == [i * i for i in range(25)]
    assert jobs_of(metric_reader, "MemmappingPool")["ok"] - before == 25


def test_loky_executor_used_directly_is_a_pool_like_concurrent_futures(instrumented: Any,
                                                                        metric_reader: Any) -> None:
    """loky's executor without joblib.Parallel: submit and map are jobs, as with ProcessPoolExecutor."""
    from joblib.externals.loky import ProcessPoolExecutor

    executor = otel_perf.name_pool(ProcessPoolExecutor(max_workers=2), "loky-direct")
    try:
        assert executor.submit(square, 3).result() == 9
        assert list(executor.map(square, range(6), chunksize=2)) == [i * i for i in range(6)]
    finally:
        executor.shutdown(wait=True)
    assert jobs_of(metric_reader, "loky-direct") == {"ok": 7, "waited": 7}


def test_results_and_errors_are_as_without_instrumentation(instrumented: Any) -> None:
    """Transparency: joblib returns the same results and raises the same exception, instrumented or not."""
    def run() -> tuple[list[int], str]:
        results = joblib.Parallel(n_jobs=2, backend="threading")(joblib.delayed(square)(i) for i in range(10))
        try:
            joblib.Parallel(n_jobs=2)(joblib.delayed(square_or_fail)(i) for i in range(8))
        except KeyError as exc:
            return results, repr(exc)
        return results, ""

    instrumented_run = run()
    instrumented.uninstrument()
    assert run() == instrumented_run == ([i * i for i in range(10)], "KeyError(5)")
