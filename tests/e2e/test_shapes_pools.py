"""Worker pools on the shapes real programs have, each program its own process, under both ways in.

The rest of the suite keeps its pools alive and exits through ``atexit``; real programs make a pool in a
function and return, make one per request, leave one running at exit, and let worker processes live
across export intervals. Each program below runs as its own Python process, under
``opentelemetry-instrument`` ("launcher") and with ``otel_perf.configure()`` ("configure"), against the
real OTLP receiver of ``otel_perf.testing``; the assertions are exact.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from otel_perf import _otlpjson
from otel_perf._semconv import (
    POOL_JOB_DURATION,
    POOL_JOB_WAIT_DURATION,
    POOL_NAME,
    POOL_QUEUE_DEPTH,
    POOL_WORKER_BUSY,
)
from otel_perf.exporters.files import iter_requests
from otel_perf.testing import OTLPReceiver
from tests.conftest import BIN, PYTHON, clean_env

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(sys.platform != "linux", reason="fork and forkserver start methods")]

MODES = ("launcher", "configure")

#: Every program starts with this: under "configure" the program sets otel-perf up itself (only in the
#: main process: spawn workers import the program as __mp_main__).
PRELUDE = '''
import sys

if __name__ == "__main__" and sys.argv[1] == "configure":
    import otel_perf

    otel_perf.configure()
'''


def run_program(tmp_path: Path, receiver: OTLPReceiver, mode: str, program: str, *args: str,
                timeout: float = 180, **env: str) -> dict[str, Any]:
    """Run ``program`` as its own process under ``mode``; return the JSON it prints last.

    Long export intervals unless the shape sets its own: what arrives is what the program's exit
    exports (and, for worker processes, what they export when they end).
    """
    path = tmp_path / "shape.py"
    path.write_text(PRELUDE + textwrap.dedent(program))
    settings = {**receiver.env("grpc"), "OTEL_METRIC_EXPORT_INTERVAL": "60000", "OTEL_BSP_SCHEDULE_DELAY": "60000",
                "OTEL_BSP_MAX_QUEUE_SIZE": "100000", **env}
    environment = clean_env(**settings, OTEL_SERVICE_NAME="shapes", OTEL_PYTHON_DISTRO="otel_perf")
    command = [PYTHON, str(path), mode, *args]
    if mode == "launcher":
        command = [str(BIN / "opentelemetry-instrument"), "python", str(path), mode, *args]
    # A session of its own: on a timeout the program and every worker process it started are stopped.
    proc = subprocess.Popen(command, env=environment, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    done = subprocess.CompletedProcess(command, proc.returncode, out, err)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "Traceback" not in done.stderr, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def ours(points: list[Any]) -> list[Any]:
    return [p for p in points if p.scope == "otel_perf"]


def jobs_by_pool(receiver: OTLPReceiver, metric: str = POOL_JOB_DURATION) -> dict[str, int]:
    """Jobs per pool in the latest point of each series of ``metric`` (cumulative)."""
    counts: dict[str, int] = defaultdict(int)
    for point in ours(receiver.latest_points(metric)):
        counts[point.attributes[POOL_NAME]] += point.count
    return dict(counts)


def job_spans_by_pool(receiver: OTLPReceiver) -> dict[str, list[Any]]:
    spans: dict[str, list[Any]] = defaultdict(list)
    for span in receiver.spans():
        if POOL_NAME in span.attributes:
            spans[span.attributes[POOL_NAME]].append(span)
    return dict(spans)


# --- scoped pools: made in a function, used, gone; the program exits right after --------------------------

SCOPED = '''
import asyncio
import concurrent.futures as cf
import json
import multiprocessing as mp
import multiprocessing.pool as mpp

import otel_perf


def square(x):
    return x * x


def thread_executor():
    with cf.ThreadPoolExecutor(2, thread_name_prefix="scoped-threads") as pool:
        return [pool.submit(square, i).result() for i in range(5)]


def process_executor(method):
    pool = cf.ProcessPoolExecutor(2, mp_context=mp.get_context(method))
    with otel_perf.name_pool(pool, f"scoped-{method}") as pool:
        return [pool.submit(square, i).result() for i in range(4)] + list(pool.map(square, range(3)))


def multiprocessing_pool():
    with mp.get_context("fork").Pool(2) as pool:
        return pool.map(square, range(6))


def multiprocessing_thread_pool():
    with mpp.ThreadPool(2) as pool:
        return pool.map(square, range(8))


def asyncio_default_executor():
    async def main():
        loop = asyncio.get_running_loop()
        return await asyncio.gather(*(loop.run_in_executor(None, square, i) for i in range(9)))

    return asyncio.run(main())


if __name__ == "__main__":
    results = [thread_executor(), *(process_executor(m) for m in ("fork", "spawn", "forkserver")),
               multiprocessing_pool(), multiprocessing_thread_pool(), asyncio_default_executor()]
    print(json.dumps([len(r) for r in results]))
'''

SCOPED_JOBS = {"scoped-threads": 5, "scoped-fork": 7, "scoped-spawn": 7, "scoped-forkserver": 7, "Pool": 6,
               "ThreadPool": 8, "asyncio": 9}


@pytest.mark.parametrize("mode", MODES)
def test_scoped_pools_of_every_kind_count_every_job_when_the_program_exits_right_after(
        tmp_path: Path, otlp_receiver: OTLPReceiver, mode: str) -> None:
    """Pools made in functions (threads, processes under fork/spawn/forkserver, multiprocessing Pool and
    ThreadPool, asyncio's default executor) are gone long before the program's only export, at exit:
    every job each of them ran is in otel_perf.pool.job.duration and its wait histogram, and has a span."""
    assert run_program(tmp_path, otlp_receiver, mode, SCOPED) == [5, 7, 7, 7, 6, 8, 9]
    runs = jobs_by_pool(otlp_receiver)
    assert {pool: runs.get(pool) for pool in SCOPED_JOBS} == SCOPED_JOBS
    waits = jobs_by_pool(otlp_receiver, POOL_JOB_WAIT_DURATION)
    assert {pool: waits.get(pool) for pool in SCOPED_JOBS} == SCOPED_JOBS
    spans = job_spans_by_pool(otlp_receiver)
    assert {pool: len(spans.get(pool, ())) for pool in SCOPED_JOBS} == SCOPED_JOBS


# --- a pool per request ----------------------------------------------------------------------------------

PER_REQUEST = '''
import concurrent.futures as cf
import gc
import json
import tracemalloc

from opentelemetry import metrics

from otel_perf.instrumentations import _workers_state


def square(x):
    return x * x


def request(i):
    with cf.ThreadPoolExecutor(3, thread_name_prefix="per-request") as pool:
        return sum(pool.map(square, (i, i + 1, i + 2)))


def pool_state():
    """otel-perf's own memory for pool state: its registries, and what its modules hold allocated."""
    gc.collect()
    snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(True, "*/otel_perf/*")])
    return len(_workers_state.states_by_id), len(_workers_state.orphans), sum(
        stat.size for stat in snapshot.statistics("filename"))


if __name__ == "__main__":
    first = [request(i) for i in range(50)]
    gc.collect()
    provider = metrics.get_meter_provider()
    provider.force_flush()  # a collection: publishes the 150 jobs of the pools already gone
    tracemalloc.start()
    before = pool_state()
    for i in range(10_000):
        request(i)
    provider.force_flush()
    after = pool_state()
    tracemalloc.stop()
    print(json.dumps({"first": len(first), "before": before, "after": after}))
'''


@pytest.mark.parametrize("mode", MODES)
def test_a_pool_per_request_counts_every_job_and_otel_perf_keeps_no_pool_state(
        tmp_path: Path, otlp_receiver: OTLPReceiver, mode: str) -> None:
    """50 requests of 3 jobs, each on its own pool collected before any export: 150 jobs at the first
    collection. Then 10 000 such pools: every job counted, and after a collection otel-perf's own pool
    state (registry, hand-over list, memory its modules hold) is back to its size before them."""
    out = run_program(tmp_path, otlp_receiver, mode, PER_REQUEST, timeout=240, OTEL_PERF_POOL_SPANS="false")
    first = [p for p in ours(otlp_receiver.metric_points(POOL_JOB_DURATION))
             if p.attributes[POOL_NAME] == "per-request"]
    assert min(p.time for p in first) < max(p.time for p in first)  # two collections reached the receiver
    earliest = min(p.time for p in first)
    assert sum(p.count for p in first if p.time == earliest) == 150
    assert jobs_by_pool(otlp_receiver)["per-request"] == 150 + 30_000
    before, after = out["before"], out["after"]
    assert after[:2] == before[:2] and after[1] == 0
    assert after[2] - before[2] < 64 * 1024, (before, after)  # bytes: nothing per pool stays


# --- a live pool at exit ----------------------------------------------------------------------------------

LIVE = '''
import concurrent.futures as cf
import json
import multiprocessing as mp

import otel_perf


def square(x):
    return x * x


threads = cf.ThreadPoolExecutor(4, thread_name_prefix="live-threads")
processes = None
mpool = None

if __name__ == "__main__":
    processes = otel_perf.name_pool(cf.ProcessPoolExecutor(2, mp_context=mp.get_context("fork")), "live-processes")
    mpool = otel_perf.name_pool(mp.get_context("fork").Pool(2), "live-mp")
    pending = [threads.submit(square, i) for i in range(1000)]  # not waited for: they run at exit
    sent = [processes.submit(square, i) for i in range(1000)]   # not waited for either
    done = mpool.map(square, range(1000), chunksize=10)
    print(json.dumps(len(done)))
'''


@pytest.mark.parametrize("mode", MODES)
def test_live_pools_at_exit_count_exactly_the_jobs_and_the_spans(
        tmp_path: Path, otlp_receiver: OTLPReceiver, mode: str) -> None:
    """Pools still alive when the program exits, with 1 000 jobs each (some not yet run at exit): the
    final export counts 1 000 per pool, the same as the job spans, and a thread pool shut down by the
    interpreter's exit reports an empty queue."""
    assert run_program(tmp_path, otlp_receiver, mode, LIVE, timeout=240) == 1000
    runs = jobs_by_pool(otlp_receiver)
    waits = jobs_by_pool(otlp_receiver, POOL_JOB_WAIT_DURATION)
    spans = job_spans_by_pool(otlp_receiver)
    for pool in ("live-threads", "live-processes", "live-mp"):
        assert (runs.get(pool), waits.get(pool), len(spans.get(pool, ()))) == (1000, 1000, 1000), pool
    depth = {p.attributes[POOL_NAME]: p.value for p in ours(otlp_receiver.latest_points(POOL_QUEUE_DEPTH))}
    assert depth["live-threads"] == 0


# --- worker processes that live across export intervals ---------------------------------------------------

LIFETIMES = '''
import concurrent.futures as cf
import json
import multiprocessing as mp
import time


def started():
    """This process's start on the time.time() clock, from its start ticks and the boot clock (psutil's
    create_time() adds them to /proc/stat's btime, truncated to whole seconds)."""
    import os

    with open("/proc/self/stat", "rb") as f:
        stat = f.read()
    ticks = int(stat[stat.rfind(b")") + 2:].split()[19])
    return time.time() - (time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK"))


def job(seconds):
    import os

    time.sleep(seconds)
    return os.getpid(), started(), time.time()


if __name__ == "__main__":
    time.sleep(1.0)  # the workers start well after this process: their uptimes tell them apart
    workers = {}
    for method in ("fork", "forkserver", "spawn"):
        with cf.ProcessPoolExecutor(1, mp_context=mp.get_context(method)) as pool:
            runs = [pool.submit(job, 0.8).result() for _ in range(2)]
        (pid,) = {r[0] for r in runs}
        workers[method] = {"pid": pid, "created": runs[0][1], "last_job_end": max(r[2] for r in runs)}
    print(json.dumps(workers))
'''


@pytest.mark.parametrize("mode", MODES)
def test_workers_that_lived_past_an_export_interval_report_their_whole_life(
        tmp_path: Path, otlp_receiver: OTLPReceiver, mode: str) -> None:
    """Fork, forkserver and spawn workers living about 2 s with a 1 s export interval: the last
    process.uptime each of them exports covers its life up to after its last job (fork and forkserver
    workers end with os._exit: only an export when they end can say so)."""
    workers = run_program(tmp_path, otlp_receiver, mode, LIFETIMES, OTEL_METRIC_EXPORT_INTERVAL="1000")
    uptimes = ours(otlp_receiver.metric_points("process.uptime"))
    for method, worker in workers.items():
        assert worker["last_job_end"] - worker["created"] > 1.2, method  # lived past one interval
        # A process's uptime points satisfy time - uptime = its start (within the kernel's clock ticks: a
        # forked child counts from the fork).
        mine = [p for p in uptimes if abs(p.time / 1e9 - p.value - worker["created"]) < 0.3]
        assert len(mine) >= 2, (method, worker)  # a periodic export, then the one when it ended
        last = max(mine, key=lambda p: p.time)
        start = last.time / 1e9 - last.value
        assert last.value >= worker["last_job_end"] - start, (method, worker, [(p.time, p.value) for p in mine])


# --- joblib -------------------------------------------------------------------------------------------------

JOBLIB = '''
import json

from joblib import Parallel, delayed
from opentelemetry import trace


def square(x):
    return x * x


def cube(x):
    return x * x * x


if __name__ == "__main__":
    with trace.get_tracer("shapes").start_as_current_span("request") as span:
        squares = Parallel(n_jobs=2)(delayed(square)(i) for i in range(50))
        cubes = Parallel(n_jobs=2, backend="threading")(delayed(cube)(i) for i in range(60))
    assert squares == [i * i for i in range(50)] and cubes == [i ** 3 for i in range(60)]
    print(json.dumps(format(span.get_span_context().span_id, "016x")))
'''


@pytest.mark.parametrize("mode", MODES)
def test_joblib_tasks_are_jobs_named_after_their_function_under_the_callers_span(
        tmp_path: Path, otlp_receiver: OTLPReceiver, mode: str) -> None:
    """joblib.Parallel with loky (its default, worker processes) and threading: one job per task, its
    span named after the task's function and a child of the span that called Parallel."""
    pytest.importorskip("joblib")
    parent = run_program(tmp_path, otlp_receiver, mode, JOBLIB)
    spans = job_spans_by_pool(otlp_receiver)
    assert {pool: sorted({s.name for s in spans[pool]}) for pool in ("loky", "ThreadPool")} == {
        "loky": ["loky square"], "ThreadPool": ["ThreadPool cube"]}
    assert (len(spans["loky"]), len(spans["ThreadPool"])) == (50, 60)
    assert {s.parent_span_id for s in spans["loky"] + spans["ThreadPool"]} == {parent}
    runs = jobs_by_pool(otlp_receiver)
    assert (runs["loky"], runs["ThreadPool"]) == (50, 60)


# --- the demo -----------------------------------------------------------------------------------------------


def test_the_demo_shows_its_pools_as_a_users_program(tmp_path: Path) -> None:
    """make demo's command pool is the user's: its jobs have spans, its busy workers are seen, and the
    tools the jobs call are children of their job (at least 95 % of execute_tool spans have a parent)."""
    out = tmp_path / "out"
    done = subprocess.run([str(BIN / "otel-perf"), "demo", "--duration", "3", "--output", str(out)],
                          env=clean_env(), cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert done.returncode in (0, 1), done.stderr[-3000:]
    requests = [request for _, request in iter_requests(out)]
    spans = [span for request in requests for span in _otlpjson.spans(request)]
    commands = [s for s in spans if s.attributes.get(POOL_NAME) == "commands"]
    assert commands and {s.name for s in commands} == {"commands run_command"}
    tools = [s for s in spans if s.name.startswith("execute_tool ")]
    assert len(tools) > 20
    assert sum(1 for s in tools if s.parent_span_id) >= 0.95 * len(tools)
    busy = [p.value for request in requests for p in _otlpjson.metric_points(request)
            if p.name == POOL_WORKER_BUSY and p.attributes.get(POOL_NAME) == "commands"]
    assert busy and max(busy) > 0
