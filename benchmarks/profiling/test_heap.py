"""Cost of turning a tracemalloc snapshot into a heap profile's samples.

A busy program has millions of live blocks. Group ``profiling.heap.grouping`` takes one snapshot of
2,000 live records (about 6,000 blocks) with tracemalloc still running, as it does when
``OTEL_PERF_TRACEMALLOC`` started it, and groups it by traceback: ``test_grouping_baseline_stdlib`` the
way heap profiles did before (``filter_traces`` to leave out the profiler's own allocations, then
``statistics("traceback")``), ``test_grouping_otel_perf`` with ``otel_perf.profiling.heap._grouped``.
Both give the same groups (tests/profiling/test_heap_and_threads.py checks that). Both are linear in the
live blocks: with 100,000 records (about 300,000 blocks) one run here measured 44 s for the standard
library against 0.10 s (about 400x), too slow a baseline for ``make test``'s smoke run. Run:
``.venv/bin/python -m pytest benchmarks/profiling/test_heap.py --benchmark-enable --benchmark-only``.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator

import pytest

from otel_perf.profiling import heap

RECORDS = 2_000


@pytest.fixture(scope="module")
def snapshot() -> Iterator[tracemalloc.Snapshot]:
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start(16)
    kept = [{"key": "x" * 40 + str(i), "values": [i, 2, 3]} for i in range(RECORDS)]
    yield tracemalloc.take_snapshot()
    del kept
    if not was_tracing:
        tracemalloc.stop()


def _stdlib(snapshot: tracemalloc.Snapshot) -> int:
    own = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, heap.__file__)]
    return len(snapshot.filter_traces(own).statistics("traceback"))


@pytest.mark.benchmark(group="profiling.heap.grouping")
def test_grouping_baseline_stdlib(benchmark: pytest.FixtureRequest, snapshot: tracemalloc.Snapshot) -> None:
    assert benchmark(_stdlib, snapshot) > 0  # type: ignore[operator]


@pytest.mark.benchmark(group="profiling.heap.grouping")
def test_grouping_otel_perf(benchmark: pytest.FixtureRequest, snapshot: tracemalloc.Snapshot) -> None:
    assert len(benchmark(heap._grouped, snapshot)) > 0  # type: ignore[operator]
