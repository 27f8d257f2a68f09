"""Cost of the sampling profiler on a CPU-bound thread (budget in ``benchmarks/budgets.toml``:
at most 2% in CPU mode at 100 Hz).

Set-up: the main thread runs a CPU-bound loop about 30 frames deep while 4 idle threads are parked about
30 frames deep. Group
``profiling.sampler`` has the bare loop and the same loop with a 100 Hz sampler in CPU mode and in wall
mode, in the same run; each sampled case also records the sampler's per-tick cost and achieved rate in
``extra_info``. Run: ``.venv/bin/python -m pytest benchmarks/profiling --benchmark-enable``.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Iterator

import pytest

from otel_perf.profiling.sampler import Sampler

DEPTH = 30
ROUNDS = 20


def _nested(depth: int, leaf: object) -> object:
    if depth:
        return _nested(depth - 1, leaf)
    return leaf() if callable(leaf) else None


def _cpu_work() -> int:
    total = 0
    for i in range(1_500_000):
        total += i * i
    return total


def cpu_loop() -> object:
    """One unit of CPU-bound work, about 30 frames deep."""
    return _nested(DEPTH, _cpu_work)


@pytest.fixture(scope="module")
def idle_threads() -> Iterator[None]:
    """4 threads parked about 30 frames deep, for the whole module."""
    stop = threading.Event()
    threads = [threading.Thread(target=_nested, args=(DEPTH, stop.wait), name=f"idle-{i}", daemon=True)
               for i in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.05)
    yield
    stop.set()
    for t in threads:
        t.join(5)


def _run(benchmark: pytest.FixtureRequest, mode: str | None) -> None:
    cpu_loop()  # warm up
    sampler = Sampler(mode, hz=100) if mode else None  # type: ignore[arg-type]
    if sampler is not None:
        sampler.start()
    try:
        benchmark.pedantic(cpu_loop, rounds=ROUNDS, iterations=1, warmup_rounds=2)  # type: ignore[attr-defined]
    finally:
        if sampler is not None:
            sampler.stop()
    if sampler is not None:
        stats = sampler.stats
        benchmark.extra_info.update(  # type: ignore[attr-defined]
            mode=mode, ticks=stats.ticks, samples=stats.samples, achieved_hz=round(stats.achieved_hz, 1),
            cost_per_tick_us=round(stats.cost_per_tick_ns / 1000, 1),
            cost_per_sample_us=round(stats.sampling_ns / max(stats.samples, 1) / 1000, 1),
            sampler_thread_cpu_per_tick_us=round(stats.thread_cpu_per_tick_ns / 1000, 1),
            sampling_share_of_wall=round(stats.sampling_ns / stats.duration_ns, 5),
            frames_walked_per_tick=round(stats.frames_walked / max(stats.ticks, 1), 1),
        )


@pytest.mark.benchmark(group="profiling.sampler")
def test_cpu_loop_baseline(benchmark: pytest.FixtureRequest, idle_threads: None) -> None:
    """The bare loop, no profiler (wall time)."""
    _run(benchmark, None)


@pytest.mark.benchmark(group="profiling.sampler")
def test_cpu_loop_sampler_cpu_100hz(benchmark: pytest.FixtureRequest, idle_threads: None) -> None:
    """The loop with a 100 Hz CPU-mode sampler: only the busy thread is walked each tick (wall time)."""
    _run(benchmark, "cpu")


@pytest.mark.benchmark(group="profiling.sampler")
def test_cpu_loop_sampler_wall_100hz(benchmark: pytest.FixtureRequest, idle_threads: None) -> None:
    """The loop with a 100 Hz wall-mode sampler: all 5 threads sampled, parked stacks reused (wall time)."""
    _run(benchmark, "wall")


# The same three cases timed by the process's CPU time (all threads, the sampler's included). On this
# shared 2-core machine wall time swings with the other tenants' load; CPU time barely does, and it
# counts what the sampler costs: its own CPU while it holds the GIL plus what it does to the busy
# thread's caches.

@pytest.mark.benchmark(group="profiling.sampler.process_cpu", timer=time.process_time)
def test_process_cpu_baseline(benchmark: pytest.FixtureRequest, idle_threads: None) -> None:
    """The bare loop, no profiler (process CPU time)."""
    _run(benchmark, None)


@pytest.mark.benchmark(group="profiling.sampler.process_cpu", timer=time.process_time)
def test_process_cpu_sampler_cpu_100hz(benchmark: pytest.FixtureRequest, idle_threads: None) -> None:
    """The loop with a 100 Hz CPU-mode sampler (process CPU time)."""
    _run(benchmark, "cpu")


@pytest.mark.benchmark(group="profiling.sampler.process_cpu", timer=time.process_time)
def test_process_cpu_sampler_wall_100hz(benchmark: pytest.FixtureRequest, idle_threads: None) -> None:
    """The loop with a 100 Hz wall-mode sampler (process CPU time)."""
    _run(benchmark, "wall")


@pytest.mark.benchmark(group="profiling.sampler.paired")
def test_paired_slowdown_interleaved(benchmark: pytest.FixtureRequest, idle_threads: None) -> None:
    """Interleaved blocks of [bare, CPU mode, wall mode] in rotating order; the medians of the paired ratios
    go to extra_info (less sensitive than sequential cases to the machine's speed changing mid-run)."""
    blocks = 18
    ratios: dict[str, list[float]] = {"cpu": [], "wall": [], "cpu_process": [], "wall_process": []}
    # per mode, summed over its blocks: ticks, samples, ns inside ticks, the sampling thread's CPU ns
    totals = {mode: [0, 0, 0, 0] for mode in ("cpu", "wall")}
    orders = [(None, "cpu", "wall"), ("cpu", "wall", None), ("wall", None, "cpu")]

    def block_time(mode: str | None) -> tuple[float, float]:
        sampler = Sampler(mode, hz=100) if mode else None  # type: ignore[arg-type]
        if sampler is not None:
            sampler.start()
        began, began_cpu = time.perf_counter(), time.process_time()
        for _ in range(3):
            cpu_loop()
        elapsed, elapsed_cpu = time.perf_counter() - began, time.process_time() - began_cpu
        if sampler is not None:
            sampler.stop()
            stats = sampler.stats
            total = totals[str(mode)]
            for i, value in enumerate((stats.ticks, stats.samples, stats.sampling_ns, stats.thread_cpu_ns)):
                total[i] += value
        return elapsed, elapsed_cpu

    def measure() -> None:
        for b in range(blocks):
            times = {mode: block_time(mode) for mode in orders[b % 3]}
            for mode in ("cpu", "wall"):
                ratios[mode].append(times[mode][0] / times[None][0])
                ratios[f"{mode}_process"].append(times[mode][1] / times[None][1])

    benchmark.pedantic(measure, rounds=1, iterations=1)  # type: ignore[attr-defined]
    def quartiles(values: list[float]) -> list[float]:
        return [round(q, 4) for q in statistics.quantiles(values, n=4)]

    costs = {}
    for mode, (ticks, samples, sampling_ns, thread_cpu_ns) in totals.items():
        # Per tick and per sample, over every block (each block a new profile, so first walks included).
        costs[f"{mode}_cost_per_tick_us"] = round(sampling_ns / max(ticks, 1) / 1000, 1)
        costs[f"{mode}_cost_per_sample_us"] = round(sampling_ns / max(samples, 1) / 1000, 1)
        costs[f"{mode}_sampler_thread_cpu_per_tick_us"] = round(thread_cpu_ns / max(ticks, 1) / 1000, 1)
        costs[f"{mode}_samples_per_tick"] = round(samples / max(ticks, 1), 2)
    benchmark.extra_info.update(  # type: ignore[attr-defined]
        **costs,
        cpu_quartiles=quartiles(ratios["cpu"]),
        wall_quartiles=quartiles(ratios["wall"]),
        cpu_median_ratio=round(statistics.median(ratios["cpu"]), 4),
        cpu_process_time_median_ratio=round(statistics.median(ratios["cpu_process"]), 4),
        wall_process_time_median_ratio=round(statistics.median(ratios["wall_process"]), 4),
        wall_median_ratio=round(statistics.median(ratios["wall"]), 4),
        cpu_ratios=[round(r, 3) for r in ratios["cpu"]],
        wall_ratios=[round(r, 3) for r in ratios["wall"]],
    )
