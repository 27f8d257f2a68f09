"""The host program must not notice the worker-pool instrumentation.

Each scenario runs twice, bare and instrumented, and what the program can observe (results, exception
types, messages, attributes and tracebacks, cancellation, shutdown, timeouts, ordering, worker reuse,
initializers, pickling errors) must be the same.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import multiprocessing.pool as mpp
import os
import re
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import pytest

import otel_perf
from otel_perf._semconv import JOB_OUTCOME, POOL_JOB_DURATION, POOL_NAME
from otel_perf.instrumentations.workers import WorkerPoolInstrumentor
from otel_perf.testing import metric_points

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="uses the fork start method")
FORK = mp.get_context("fork")


class JobError(Exception):
    """An exception with extra state, as user exceptions often have."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message, code)
        self.code = code


def work(x: int) -> int:
    return x * 2


def fail(x: int) -> int:
    raise JobError(f"job {x} failed", x)


def sleepy(x: float) -> float:
    time.sleep(x)
    return x


def pid(_: object = None) -> int:
    return os.getpid()


def unpicklable_result(_: object = None) -> Any:
    return lambda: None


_initialized: list[str] = []


def init(value: str) -> None:
    _initialized.append(value)


def initialized(_: object = None) -> list[str]:
    return list(_initialized)


def normalise(text: str) -> str:
    return re.sub(r"0x[0-9a-f]+", "0x?", text)


def describe(exc: BaseException) -> tuple[Any, ...]:
    """What a program can observe of an exception raised by a job."""
    cause = exc.__cause__
    attributes = normalise(repr(vars(exc))) if hasattr(exc, "__dict__") else None
    return (type(exc), normalise(repr(exc.args)), attributes, normalise(str(exc)),
            type(cause).__name__ if cause is not None else None)


@pytest.fixture
def both(tracer_provider: Any, meter_provider: Any) -> Callable[..., Any]:
    """Run a scenario bare, then instrumented; assert the two observations are equal; return them."""
    instrumentor = WorkerPoolInstrumentor()

    def run(scenario: Callable[[], Any], while_instrumented: Callable[[], None] | None = None) -> Any:
        bare = scenario()
        instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
        try:
            instrumented = scenario()
            if while_instrumented is not None:
                while_instrumented()
        finally:
            instrumentor.uninstrument()
        assert instrumented == bare
        return bare

    return run


def outcome(call: Callable[[], Any]) -> Any:
    try:
        return ("ok", call())
    except BaseException as exc:
        return ("raised", describe(exc))


def test_return_values_and_exceptions_are_unchanged(both: Any) -> None:
    """Same results, and the same exceptions (type, args, attributes, message, remote traceback cause)."""

    def scenario() -> Any:
        seen = []
        with cf.ThreadPoolExecutor(2) as pool:
            seen += [outcome(pool.submit(work, 2).result), outcome(pool.submit(fail, 3).result)]
        with cf.ProcessPoolExecutor(2, mp_context=FORK) as pool:
            seen += [outcome(pool.submit(work, 2).result), outcome(pool.submit(fail, 3).result)]
            seen += [outcome(lambda: list(pool.map(fail, [1])))]
        with FORK.Pool(2) as pool:
            seen += [outcome(lambda: pool.apply(work, (2,))), outcome(lambda: pool.apply(fail, (3,)))]
            seen += [outcome(lambda: pool.map(fail, [1, 2], chunksize=2))]
        with mpp.ThreadPool(2) as pool:
            seen += [outcome(lambda: pool.apply(work, (2,))), outcome(lambda: pool.apply(fail, (3,)))]
        return seen

    seen = both(scenario)
    expected = (JobError, "('job 3 failed', 3)", "{'code': 3}", "('job 3 failed', 3)", None)
    assert seen[1] == ("raised", expected)
    assert seen[3][1][4] == "_RemoteTraceback"


def test_tracebacks_still_end_in_the_users_frame(both: Any) -> None:
    """The thread-pool traceback ends at the user's raise; the process-pool remote traceback names it."""

    def scenario() -> Any:
        with cf.ThreadPoolExecutor(1) as pool:
            exc = pool.submit(fail, 1).exception()
        last = traceback.extract_tb(exc.__traceback__)[-1]
        with cf.ProcessPoolExecutor(1, mp_context=FORK) as pool:
            remote = pool.submit(fail, 2).exception()
        remote_text = str(remote.__cause__)
        raise_line = 'raise JobError(f"job {x} failed", x)'
        return last.name, last.line, "in fail" in remote_text, raise_line in remote_text

    assert both(scenario) == ("fail", 'raise JobError(f"job {x} failed", x)', True, True)


def test_cancel_behaves_as_before_and_counts_cancelled(both: Any, metric_reader: Any) -> None:
    def scenario() -> Any:
        release = threading.Event()
        with otel_perf.name_pool(cf.ThreadPoolExecutor(1), "cancel") as pool:
            running = pool.submit(release.wait, 10)
            queued = pool.submit(work, 1)
            seen = (queued.cancel(), queued.cancel(), queued.cancelled(), queued.done(), running.cancel())
            with pytest.raises(cf.CancelledError):
                queued.result()
            release.set()
        return (*seen, running.result())

    def counted_once() -> None:
        cancelled = [p for p in metric_points(metric_reader, POOL_JOB_DURATION)
                     if p.attributes[POOL_NAME] == "cancel" and p.attributes[JOB_OUTCOME] == "cancelled"]
        assert [p.count for p in cancelled] == [1]

    assert both(scenario, counted_once) == (True, True, True, True, False, True)


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_shutdown_wait_and_cancel_futures_behave_as_before(both: Any, kind: str) -> None:
    def scenario() -> Any:
        pool: cf.Executor
        pool = cf.ThreadPoolExecutor(1) if kind == "thread" else cf.ProcessPoolExecutor(1, mp_context=FORK)
        first = pool.submit(sleepy, 0.3)
        rest = [pool.submit(work, i) for i in range(5)]
        time.sleep(0.1)
        pool.shutdown(wait=False, cancel_futures=True)
        first_result = first.result(10)
        cancelled = sum(f.cancelled() for f in rest)
        pool.shutdown(wait=True)
        with pytest.raises(RuntimeError):
            pool.submit(work, 1)
        # A process pool may already have moved queued jobs into its call queue (max_workers + 1 of them):
        # those run (and CPython may leave such a future pending, instrumented or not).
        return first_result, cancelled >= len(rest) - 2, kind == "process" or all(f.done() for f in rest)

    assert both(scenario) == (0.3, True, True)


def test_map_keeps_order_and_times_out_as_before(both: Any) -> None:
    def scenario() -> Any:
        with cf.ThreadPoolExecutor(3) as pool:
            ordered = list(pool.map(sleepy, [0.06, 0.01, 0.03]))
            with pytest.raises(cf.TimeoutError):
                list(pool.map(sleepy, [0.5, 0.01], timeout=0.05))
        with cf.ProcessPoolExecutor(2, mp_context=FORK) as pool:
            chunked = list(pool.map(work, range(10), chunksize=4))
            processes = list(pool.map(sleepy, [0.05, 0.0, 0.02]))
        return ordered, chunked, processes

    assert both(scenario) == ([0.06, 0.01, 0.03], [x * 2 for x in range(10)], [0.05, 0.0, 0.02])


def test_workers_are_replaced_after_max_tasks_as_before(both: Any) -> None:
    """maxtasksperchild / max_tasks_per_child still retire workers (distinct pids per task)."""

    def scenario() -> Any:
        with FORK.Pool(1, maxtasksperchild=1) as pool:
            mp_pids = {pool.apply(pid) for _ in range(3)}
        seen = [len(mp_pids)]
        if sys.version_info >= (3, 11):
            ctx = mp.get_context("forkserver")
            with cf.ProcessPoolExecutor(1, mp_context=ctx, max_tasks_per_child=1) as pool:
                seen.append(len({pool.submit(pid).result() for _ in range(2)}))
        return seen

    assert both(scenario)[0] == 3


def test_initializer_and_initargs_run_in_every_worker(both: Any) -> None:
    def scenario() -> Any:
        with cf.ProcessPoolExecutor(1, mp_context=FORK, initializer=init, initargs=("ppe",)) as pool:
            ppe = pool.submit(initialized).result()
        with FORK.Pool(1, initializer=init, initargs=("mp",)) as pool:
            mp_seen = pool.apply(initialized)
        with cf.ThreadPoolExecutor(1, initializer=init, initargs=("tpe",)) as pool:
            tpe = pool.submit(initialized).result()
        _initialized.clear()
        return ppe, mp_seen, tpe

    assert both(scenario) == (["ppe"], ["mp"], ["tpe"])


def test_pickling_errors_are_the_same(both: Any) -> None:
    """Unpicklable functions, arguments and results fail exactly as without otel-perf."""

    def scenario() -> Any:
        seen = []
        with cf.ProcessPoolExecutor(1, mp_context=FORK) as pool:
            seen.append(outcome(pool.submit(lambda: 1).result))
            seen.append(outcome(pool.submit(work, threading.Lock()).result))
            seen.append(outcome(pool.submit(unpicklable_result).result))
            seen.append(outcome(pool.submit(work, 4).result))  # the pool still works
        with FORK.Pool(1) as pool:
            seen.append(outcome(lambda: pool.apply(lambda: 1)))
            seen.append(outcome(lambda: pool.apply(unpicklable_result)))
            seen.append(outcome(lambda: pool.map(unpicklable_result, [1, 2])))
            seen.append(outcome(lambda: pool.apply(work, (5,))))
        return seen

    seen = both(scenario)
    assert seen[3] == ("ok", 8) and seen[-1] == ("ok", 10)
    assert all(kind == "raised" for kind, _ in seen[:3] + seen[4:7])
