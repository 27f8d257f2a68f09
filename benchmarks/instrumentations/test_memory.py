"""The cost of one memory-pressure check and of one collection of the memory metrics.

``baseline`` twins: reading this process's RSS with psutil (the least any memory metric does), and a
collection of a meter provider with no memory instruments. ``instrumented``: ``MemoryMonitor.check()``
(limit, usage, pressure, PSI, process tree, state) and a collection with ``MemoryInstrumentor`` on.
Both run on this machine's real /proc and cgroup files.
"""

from __future__ import annotations

from typing import Any

import psutil

from otel_perf import MemoryMonitor
from otel_perf._config import load_settings
from otel_perf.instrumentations.memory import MemoryInstrumentor


def test_baseline_rss_read(benchmark: Any) -> None:
    benchmark.group = "memory-check"
    process = psutil.Process()
    benchmark(lambda: process.memory_info().rss)


def test_instrumented_check(benchmark: Any) -> None:
    benchmark.group = "memory-check"
    monitor = MemoryMonitor(settings=load_settings({}))
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
