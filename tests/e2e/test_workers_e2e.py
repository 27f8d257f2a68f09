"""A real app with every kind of pool, under the launcher and under configure(), against a real receiver."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from otel_perf._semconv import (
    ERROR_TYPE,
    METRICS,
    POOL_JOB_DURATION,
    POOL_JOB_REJECTED,
    POOL_JOB_RETRIES,
    POOL_JOB_WAIT_DURATION,
    POOL_NAME,
    POOL_QUEUE_DEPTH,
    POOL_WORKER_BUSY,
    POOL_WORKER_LIMIT,
    POOL_WORKER_MEMORY_MAX,
    PROCESS_PID,
)
from tests.conftest import BIN, PYTHON, clean_env

pytestmark = pytest.mark.e2e

APP = textwrap.dedent('''
    import concurrent.futures as cf
    import json
    import multiprocessing as mp
    import multiprocessing.pool as mpp
    import os
    import queue
    import sys

    from opentelemetry import metrics, trace

    import otel_perf


    def work(x):
        return x * 2


    def fail(x):
        raise ValueError(f"job {x} failed")


    def run_jobs(name, pool, failing):
        if isinstance(pool, cf.Executor):
            assert pool.submit(work, 1).result(timeout=60) == 2
            assert list(pool.map(work, [2, 3], timeout=60)) == [4, 6]
            if failing:
                try:
                    pool.submit(fail, 9).result(timeout=60)
                except ValueError:
                    pass
                else:
                    raise AssertionError("the failing job did not fail")
        else:
            assert pool.apply(work, (1,)) == 2
            assert pool.map(work, [2, 3]) == [4, 6]
            if failing:
                try:
                    pool.apply(fail, (9,))
                except ValueError:
                    pass
                else:
                    raise AssertionError("the failing job did not fail")


    def main():
        if sys.argv[1] == "configure":
            otel_perf.configure(service_name="workers-e2e")
        tracer = trace.get_tracer("app")
        pools = {
            "fork": cf.ProcessPoolExecutor(2, mp_context=mp.get_context("fork")),
            "spawn": cf.ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")),
            "forkserver": cf.ProcessPoolExecutor(1, mp_context=mp.get_context("forkserver")),
            "threads": cf.ThreadPoolExecutor(2, thread_name_prefix="threads"),
            "mpthreads": otel_perf.name_pool(mpp.ThreadPool(2), "mpthreads"),
        }
        for name in ("fork", "spawn", "forkserver"):
            otel_perf.name_pool(pools[name], name)
        parents = []
        with mp.get_context("fork").Pool(2) as mpool:
            otel_perf.name_pool(mpool, "mpool")
            pools["mpool"] = mpool
            for request in (1, 2):
                with tracer.start_as_current_span(f"request-{request}") as span:
                    parents.append(format(span.get_span_context().span_id, "016x"))
                    for name, pool in pools.items():
                        run_jobs(name, pool, failing=request == 2)
            q = otel_perf.track_queue(queue.Queue(), "custom")
            q.put(1)
            with otel_perf.job(pool="custom", attempt=2):
                q.get()
            # Collect while the pools (and their worker processes) are alive.
            metrics.get_meter_provider().force_flush()
        for pool in pools.values():
            if isinstance(pool, cf.Executor):
                pool.shutdown(wait=True)
            elif pool is not mpool:
                pool.close()
                pool.join()
        try:
            pools["threads"].submit(work, 1)
        except RuntimeError:
            pass
        print(json.dumps({"pid": os.getpid(), "parents": parents}))
        if sys.argv[1] == "configure":
            otel_perf.shutdown()


    if __name__ == "__main__":
        main()
''')

THREAD_POOLS = ("threads", "mpthreads")
PROCESS_POOLS = ("fork", "spawn", "forkserver", "mpool")
ALL_POOLS = PROCESS_POOLS + THREAD_POOLS
#: per pool: 3 jobs in each of two requests, plus one failing job in the second
JOBS_PER_POOL = 7


def _run(tmp_path: Path, receiver, mode: str) -> dict:
    app = tmp_path / "app.py"
    app.write_text(APP)
    # Long export intervals: the metrics checked are those of the app's explicit collection and of the
    # final one at exit, so every count is exact; and no span reaches the receiver by a batch processor's
    # timer: only by the flushes otel-perf does when a worker ends (ProcessPoolExecutor workers at exit;
    # multiprocessing.Pool workers at exit or on the SIGTERM of `with Pool()`) and the parent's at exit.
    otel = {**receiver.env("grpc"), "OTEL_METRIC_EXPORT_INTERVAL": "60000",
            "OTEL_BSP_SCHEDULE_DELAY": "60000"}
    env = clean_env(**otel, OTEL_SERVICE_NAME="workers-e2e", OTEL_PYTHON_DISTRO="otel_perf")
    if mode == "launcher":
        cmd = [str(BIN / "opentelemetry-instrument"), "python", str(app), mode]
    else:
        cmd = [PYTHON, str(app), mode]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _check(receiver, out: dict) -> None:
    parents = out["parents"]

    def job_spans(r):
        return [s for s in r.spans() if s.attributes.get(POOL_NAME) in ALL_POOLS]

    expected = len(ALL_POOLS) * JOBS_PER_POOL
    spans = receiver.wait_for(lambda r: len(job_spans(r)) >= expected and job_spans(r), timeout=30)
    assert len(spans) == expected
    for pool in ALL_POOLS:
        mine = [s for s in spans if s.attributes[POOL_NAME] == pool]
        first = [s for s in mine if s.parent_span_id == parents[0]]
        second = [s for s in mine if s.parent_span_id == parents[1]]
        assert len(first) == 3 and len(second) == 4, (pool, [(s.name, s.parent_span_id) for s in mine])
        failed = [s for s in mine if s.name == f"{pool} fail"]
        assert len(failed) == 1 and failed[0] in second
        assert failed[0].status_code == 2  # ERROR
        assert failed[0].attributes[ERROR_TYPE] == "ValueError"
        assert all(s.name == f"{pool} work" for s in mine if s is not failed[0])
        if pool in PROCESS_POOLS:
            assert all(s.attributes[PROCESS_PID] != out["pid"] for s in mine), pool
        else:
            assert all(PROCESS_PID not in s.attributes for s in mine), pool

    receiver.wait_for(lambda r: r.metric_points(POOL_JOB_RETRIES), timeout=30)
    units = {spec.name: spec.unit for spec in METRICS}
    for name in (POOL_QUEUE_DEPTH, POOL_WORKER_BUSY, POOL_WORKER_LIMIT, POOL_JOB_WAIT_DURATION,
                 POOL_JOB_DURATION, POOL_JOB_REJECTED, POOL_JOB_RETRIES, POOL_WORKER_MEMORY_MAX):
        points = receiver.metric_points(name)
        assert points, name
        assert {p.unit for p in points} == {units[name]}, name

    durations = receiver.latest_points(POOL_JOB_DURATION)
    waits = receiver.latest_points(POOL_JOB_WAIT_DURATION)
    for pool in ALL_POOLS:
        ok = sum(p.count for p in durations if p.attributes[POOL_NAME] == pool
                 and p.attributes["otel_perf.job.outcome"] == "ok")
        errors = [p for p in durations if p.attributes[POOL_NAME] == pool
                  and p.attributes["otel_perf.job.outcome"] == "error"]
        assert ok == JOBS_PER_POOL - 1, pool
        assert [(p.count, p.attributes[ERROR_TYPE]) for p in errors] == [(1, "ValueError")], pool
        assert sum(p.count for p in waits if p.attributes[POOL_NAME] == pool) == JOBS_PER_POOL, pool
    limits = {p.attributes[POOL_NAME]: p.value for p in receiver.latest_points(POOL_WORKER_LIMIT)}
    assert {k: limits[k] for k in ALL_POOLS} == {"fork": 2, "spawn": 1, "forkserver": 1, "threads": 2,
                                                "mpthreads": 2, "mpool": 2}
    memory = {p.attributes[POOL_NAME]: p.value for p in receiver.metric_points(POOL_WORKER_MEMORY_MAX)}
    assert set(memory) >= set(PROCESS_POOLS) and all(memory[k] > 1 << 20 for k in PROCESS_POOLS)
    assert not set(memory) & set(THREAD_POOLS)
    rejected = receiver.latest_points(POOL_JOB_REJECTED)
    assert [(p.attributes[POOL_NAME], p.value) for p in rejected] == [("threads", 1)]
    retries = receiver.latest_points(POOL_JOB_RETRIES)
    assert [(p.attributes[POOL_NAME], p.value) for p in retries] == [("custom", 1)]
    depth = {p.attributes[POOL_NAME] for p in receiver.metric_points(POOL_QUEUE_DEPTH)}
    assert depth >= set(ALL_POOLS) | {"custom"}


@pytest.mark.skipif(sys.platform != "linux", reason="fork and forkserver start methods")
def test_launcher_app_pools_keep_trace_and_report_metrics(tmp_path: Path, otlp_receiver) -> None:
    """Under opentelemetry-instrument, every job of every pool kind arrives under its request's span."""
    out = _run(tmp_path, otlp_receiver, "launcher")
    _check(otlp_receiver, out)


@pytest.mark.skipif(sys.platform != "linux", reason="fork and forkserver start methods")
def test_configured_app_pools_keep_trace_and_report_metrics(tmp_path: Path, otlp_receiver) -> None:
    """With otel_perf.configure() (spawn workers bootstrap from its snapshot), the same holds."""
    out = _run(tmp_path, otlp_receiver, "configure")
    _check(otlp_receiver, out)
