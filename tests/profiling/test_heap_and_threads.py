"""Heap profiles from tracemalloc and thread dumps (text, grouped, pprof)."""

from __future__ import annotations

import asyncio
import threading
import tracemalloc
from collections.abc import Iterator

import pytest

from otel_perf.profiling import heap, pprof, threads

_kept: list[bytes] = []


def allocate_blocks(stop: threading.Event) -> None:
    while not stop.is_set() and len(_kept) < 400:
        _kept.append(bytes(10_000))
        stop.wait(0.001)


@pytest.fixture
def no_tracemalloc() -> Iterator[None]:
    was = tracemalloc.is_tracing()
    tracemalloc.stop()
    _kept.clear()
    yield
    tracemalloc.stop()
    _kept.clear()
    if was:
        tracemalloc.start()


def _space_by_function(data: bytes) -> dict[str, int]:
    prof = pprof.decode(data)
    index = prof.sample_index("inuse_space")
    out: dict[str, int] = {}
    for names, sample in prof.stacks():
        out[names[-1]] = out.get(names[-1], 0) + sample.values[index]
    return out


def test_heap_request_starts_tracemalloc_for_the_window_and_stops_it(no_tracemalloc: None) -> None:
    """Without tracemalloc, the profile is the growth over `seconds`, named by function; afterwards
    tracemalloc is off again (a heap request does not slow the program down for good)."""
    stop = threading.Event()
    worker = threading.Thread(target=allocate_blocks, args=(stop,))
    worker.start()
    try:
        data = heap.heap_profile(0.5)
    finally:
        stop.set()
        worker.join(5)
    assert not tracemalloc.is_tracing()
    space = _space_by_function(data)
    assert space.get("allocate_blocks", 0) >= 10_000, space
    prof = pprof.decode(data)
    assert [(v.type, v.unit) for v in prof.sample_types] == [("inuse_objects", "count"),
                                                             ("inuse_space", "bytes")]
    assert prof.default_sample_type == "inuse_space"
    assert any("growth over" in c for c in prof.comments)


def test_heap_profile_with_tracemalloc_running_shows_what_is_in_use(no_tracemalloc: None) -> None:
    """With tracemalloc on (OTEL_PERF_TRACEMALLOC), the profile is returned at once and it stays on."""
    tracemalloc.start(8)
    _kept.append(bytes(50_000))
    data = heap.heap_profile()
    assert tracemalloc.is_tracing()
    space = _space_by_function(data)
    owner = "test_heap_profile_with_tracemalloc_running_shows_what_is_in_use"
    assert space.get(owner, 0) >= 50_000, space


def test_a_second_growth_measurement_at_once_is_refused(no_tracemalloc: None) -> None:
    """Two overlapping growth windows would stop each other's tracemalloc: the second is refused."""
    stop = threading.Event()
    first = threading.Thread(target=heap.heap_profile, kwargs={"seconds": 5, "stop": stop})
    first.start()
    try:
        for _ in range(100):
            if tracemalloc.is_tracing():
                break
            stop.wait(0.01)
        with pytest.raises(heap.HeapBusy):
            heap.heap_profile(0.1)
    finally:
        stop.set()
        first.join(5)


def parked_function(stop: threading.Event) -> None:
    stop.wait()


@pytest.fixture
def parked() -> Iterator[None]:
    stop = threading.Event()
    workers = [threading.Thread(target=parked_function, args=(stop,), name=f"parked-{i}") for i in range(3)]
    for t in workers:
        t.start()
    yield
    stop.set()
    for t in workers:
        t.join(5)


def test_full_dump_lists_every_thread_with_source_lines(parked: None) -> None:
    """debug=2: each thread by name with its full stack and source lines."""
    text = threads.dump_text()
    for i in range(3):
        assert f'"parked-{i}"' in text
    assert "in parked_function" in text
    assert "stop.wait()" in text  # the source line
    assert '"MainThread"' in text


def test_full_dump_includes_asyncio_tasks_and_where_they_wait() -> None:
    """Pending asyncio tasks are listed by name with the line where each is suspended."""
    async def waiting_coroutine(event: asyncio.Event) -> None:
        await event.wait()

    async def main() -> str:
        event = asyncio.Event()
        task = asyncio.create_task(waiting_coroutine(event), name="waiter-task")
        await asyncio.sleep(0.01)
        text = threads.dump_text()
        event.set()
        await task
        return text

    text = asyncio.run(main())
    assert "asyncio tasks" in text
    assert 'Task "waiter-task" coro=' in text
    assert "in waiting_coroutine" in text


def test_grouped_dump_counts_identical_stacks(parked: None) -> None:
    """debug=1: the three parked threads share one stack and are counted together."""
    text = threads.dump_grouped()
    assert text.startswith("threads profile: total ")
    group = next(block for block in text.split("\n\n") if "parked_function" in block)
    assert "\n3 @ " in "\n" + group
    assert "#\tparked_function\t" in group


def test_pprof_dump_has_one_sample_per_thread(parked: None) -> None:
    """debug=0: a threads/count profile with a thread label per sample."""
    prof = pprof.decode(threads.dump_pprof())
    assert prof.sample_types[0].type == "threads"
    names = [next(lb.value for lb in s.labels if lb.key == "thread") for s in prof.samples]
    assert len(names) == threading.active_count()
    assert {"parked-0", "parked-1", "parked-2", "MainThread"} <= set(names)


def _make_records(n: int) -> list[dict[str, object]]:
    return [{"key": "x" * 40 + str(i), "values": [i]} for i in range(n)]


def test_grouping_raw_traces_matches_the_standard_librarys_statistics(no_tracemalloc: None) -> None:
    """The fast grouping gives exactly what filter_traces + statistics("traceback") give: the same
    tracebacks (leaf first), blocks and bytes, without tracemalloc's and the profiler's own allocations;
    and the public fallback, used when the raw traces are missing, agrees with both."""
    tracemalloc.start(16)
    kept = _make_records(2000)
    snapshot = tracemalloc.take_snapshot()
    tracemalloc.stop()
    fast = heap._grouped(snapshot)
    own = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, heap.__file__)]
    expected = {tuple((f.filename, f.lineno) for f in reversed(stat.traceback)): (stat.count, stat.size)
                for stat in snapshot.filter_traces(own).statistics("traceback")}
    assert fast == expected
    assert any(frames[0][0] == __file__ and count >= 2000 for frames, (count, _) in fast.items())

    class _NoRawTraces:
        traces = None

        @staticmethod
        def statistics(key_type: str) -> list[tracemalloc.Statistic]:
            return snapshot.statistics(key_type)

    assert heap._grouped(_NoRawTraces()) == expected  # type: ignore[arg-type]
    assert kept
