"""The cost of one memory-pressure check and of one collection of the memory metrics.

``baseline`` twins: reading this process's RSS the cheapest correct way (``/proc/self/statm`` with one
``os.open``/``os.read``; psutil's ``memory_info()`` beside it for reference), and a collection of a meter
provider with no memory instruments. ``instrumented``: ``MemoryMonitor.check()`` (usage read afresh; the limit
and the slow-moving parts of the usage as cached, docs/memory.md) and a collection with ``MemoryInstrumentor``
on. Both run on this machine's real /proc and cgroup files.

Issue 20 prices ``check()`` at most 2x a plain RSS read. Two calls of a few microseconds measured in
sequential cases drift apart with the machine's load, so ``test_check_paired`` also measures them
interleaved (A B B A blocks, thread CPU time) and stores the median of the per-block ratios, which the
budget checks.
"""

from __future__ import annotations

import gc
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import psutil

from otel_perf import MemoryMonitor
from otel_perf._config import load_settings
from otel_perf.instrumentations.memory import MemoryInstrumentor

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def _read_rss() -> int:
    """This process's RSS: the least any memory check must do."""
    fd = os.open("/proc/self/statm", os.O_RDONLY)
    try:
        return int(os.read(fd, 256).split()[1]) * _PAGE_SIZE
    finally:
        os.close(fd)


def test_baseline_rss_read(benchmark: Any) -> None:
    benchmark.group = "memory-check"
    assert benchmark(_read_rss) > 0


def test_baseline_psutil_rss_read(benchmark: Any) -> None:
    """For reference: psutil's reading, what the issue's 16 us figure was."""
    benchmark.group = "memory-check"
    process = psutil.Process()
    benchmark(lambda: process.memory_info().rss)


def test_instrumented_check(benchmark: Any) -> None:
    benchmark.group = "memory-check"
    monitor = MemoryMonitor(settings=load_settings({}))
    assert benchmark(monitor.check) is False


def _block(call: Callable[[], Any], calls: int) -> int:
    start = time.thread_time_ns()
    for _ in range(calls):
        call()
    return time.thread_time_ns() - start


def test_check_paired(benchmark: Any) -> None:
    """``check()`` over a bare RSS read, interleaved: blocks of 200 calls, A B then B A, 60 times."""
    benchmark.group = "memory-check.paired"
    monitor = MemoryMonitor(settings=load_settings({}))
    calls, blocks = 200, 60
    if not benchmark.disabled:  # a plain test run only smoke-tests
        _block(monitor.check, calls)
        _block(_read_rss, calls)
        checks: list[int] = []
        reads: list[int] = []
        gc.collect()
        gc.freeze()
        try:
            for i in range(blocks):
                if i % 2 == 0:
                    checks.append(_block(monitor.check, calls))
                    reads.append(_block(_read_rss, calls))
                else:
                    reads.append(_block(_read_rss, calls))
                    checks.append(_block(monitor.check, calls))
        finally:
            gc.unfreeze()
        benchmark.extra_info["check_vs_rss_read"] = round(
            statistics.median(c / r for c, r in zip(checks, reads, strict=True)), 4)
        benchmark.extra_info["check_us"] = round(statistics.median(checks) / calls / 1000, 2)
        benchmark.extra_info["rss_read_us"] = round(statistics.median(reads) / calls / 1000, 2)
    assert benchmark(monitor.check) is False


def test_baseline_empty_collection(benchmark: Any, meter_provider: Any, metric_reader: Any) -> None:
    benchmark.group = "memory-collection"
    benchmark(metric_reader.collect)


def test_instrumented_collection(benchmark: Any, meter_provider: Any, metric_reader: Any) -> None:
    benchmark.group = "memory-collection"
    instrumentor = MemoryInstrumentor()
    instrumentor.instrument(meter_provider=meter_provider,
                            settings=load_settings({}, memory_check_interval=3600))
    monitor = instrumentor.monitor
    assert monitor is not None
    try:
        # Every collection reads afresh: defeat the sharing window that spans one collection's callbacks.
        def collect() -> None:
            monitor._last = None
            metric_reader.collect()

        benchmark(collect)
    finally:
        instrumentor.uninstrument()
