"""Worker pools under load: busy pools defer their bookkeeping, Pool.map chunks are timed as one, and
``OTEL_PERF_POOL_SPANS=slow`` gives spans only to slow or failed jobs (issue 20)."""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import multiprocessing as mp
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import otel_perf
from otel_perf._config import load_settings
from otel_perf._semconv import ERROR_TYPE, JOB_OUTCOME, POOL_JOB_DURATION, POOL_JOB_WAIT_DURATION, POOL_NAME
from otel_perf.instrumentations import _workers_joblog, _workers_state
from otel_perf.instrumentations.workers import WorkerPoolInstrumentor
from otel_perf.testing import metric_points

FORK = mp.get_context("fork") if sys.platform == "linux" else None
needs_fork = pytest.mark.skipif(FORK is None, reason="fork start method")
_names = itertools.count()


def unique(prefix: str) -> str:
    return f"{prefix}-{next(_names)}"


def square(x: int) -> int:
    if x == 1234:
        raise ValueError("item 1234")
    return x * x


def add(x: int, y: int) -> int:
    return x + y


@pytest.fixture
def instrument(tracer_provider: Any, meter_provider: Any) -> Iterator[Any]:
    instrumentor = WorkerPoolInstrumentor()

    def start(**settings: Any) -> WorkerPoolInstrumentor:
        instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider,
                                settings=load_settings(**settings))
        return instrumentor

    yield start
    instrumentor.uninstrument()


def points(reader: Any, name: str, pool: str, **attrs: Any) -> list[Any]:
    return [p for p in metric_points(reader, name) if p.attributes.get(POOL_NAME) == pool
            and all(p.attributes.get(k) == v for k, v in attrs.items())]


# --- busy pools: bookkeeping deferred -----------------------------------------------------------------


def test_a_busy_thread_pool_folds_only_when_its_queue_empties(instrument: Any, metric_reader: Any) -> None:
    """While jobs wait for a worker, the worker running them never folds the log (the fold waits for an
    empty queue, or FOLD_BUSY_AT entries); every job is still counted once the pool drains."""
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
    assert max(seen) >= 2 * _workers_joblog.FOLD_AT  # no fold while the queue held jobs
    (waits,) = points(metric_reader, POOL_JOB_WAIT_DURATION, name)
    assert waits.count == jobs + 1


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
