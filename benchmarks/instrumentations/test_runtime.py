"""Benchmarks of the runtime instrumentation: one full collection, and the GC-pause callback.

Run: ``.venv/bin/python -m pytest benchmarks/instrumentations/test_runtime.py --benchmark-enable``.

Budgets (``benchmarks/budgets.toml``):

* one full collection of the runtime metrics (and the memory metrics, when ``otel_perf_memory`` is
  installed) costs no more than contrib's ``SystemMetricsInstrumentor`` configured for its ``process.*``
  metrics only (group ``runtime-collection``);
* allocation-heavy code (many gen-0 collections) with otel-perf's GC callback runs at most 1.1 times the
  slowdown of a minimal reference callback (two timestamps into a preallocated list) and at most 5 %
  slower than with no callback (group ``gc-callback``).

The machine's speed drifts by up to 2x within seconds, so besides pytest-benchmark's per-case numbers,
``test_gc_callback_paired_ratios`` times the three GC variants round-robin and reports the median of the
paired ratios in ``extra_info`` (and prints them), which is the number to quote.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Iterator
from time import perf_counter_ns
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.util._importlib_metadata import entry_points

from otel_perf.instrumentations._runtime_gc import GcPauseMonitor
from otel_perf.instrumentations.runtime import RuntimeInstrumentor

# --- one full collection -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def system_metrics_reader() -> Iterator[InMemoryMetricReader]:
    from opentelemetry.instrumentation.system_metrics import _DEFAULT_CONFIG, SystemMetricsInstrumentor

    process_only = {k: v for k, v in _DEFAULT_CONFIG.items() if k.startswith("process.")}
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    instrumentor = SystemMetricsInstrumentor(config=process_only)
    instrumentor.instrument(meter_provider=provider)
    yield reader
    instrumentor.uninstrument()
    provider.shutdown()


@pytest.fixture(scope="module")
def otel_perf_reader() -> Iterator[InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    instrumentors: list[Any] = [RuntimeInstrumentor()]
    # The memory-pressure monitor is another feature; when it is installed, its collection counts too.
    for ep in entry_points(group="opentelemetry_instrumentor", name="otel_perf_memory"):
        instrumentors.append(ep.load()())
    for instrumentor in instrumentors:
        instrumentor.instrument(meter_provider=provider)
    yield reader
    for instrumentor in instrumentors:
        instrumentor.uninstrument()
    provider.shutdown()


def _points(reader: InMemoryMetricReader) -> int:
    data = reader.get_metrics_data()
    assert data is not None
    return sum(len(m.data.data_points) for rm in data.resource_metrics for sm in rm.scope_metrics
               for m in sm.metrics)


@pytest.mark.benchmark(group="runtime-collection")
def test_collection_baseline_system_metrics_process_only(
    benchmark: Any, system_metrics_reader: InMemoryMetricReader
) -> None:
    """contrib system_metrics, process.* only: the budget."""
    benchmark.extra_info["points"] = _points(system_metrics_reader)
    benchmark(system_metrics_reader.get_metrics_data)


@pytest.mark.benchmark(group="runtime-collection")
def test_collection_instrumented_otel_perf_runtime(benchmark: Any,
                                                   otel_perf_reader: InMemoryMetricReader) -> None:
    """Every runtime metric (plus memory when installed), one reading per collection."""
    benchmark.extra_info["points"] = _points(otel_perf_reader)
    benchmark(otel_perf_reader.get_metrics_data)


# --- the GC callback ---------------------------------------------------------------------------------

_OBJECTS_PER_OP = 7000  # about 10 gen-0 collections per op at the default threshold of 700


def _allocation_heavy() -> Any:
    return [[] for _ in range(_OBJECTS_PER_OP)]


def _make_reference_callback() -> Callable[[str, dict[str, Any]], None]:
    slots = [0, 0]

    def reference(phase: str, info: dict[str, Any], _now: Callable[[], int] = perf_counter_ns,
                  _slots: list[int] = slots) -> None:
        if phase == "start":
            _slots[0] = _now()
        else:
            _slots[1] = _now()

    return reference


class _Variant:
    def __init__(self, name: str) -> None:
        self.name = name
        self._monitor: GcPauseMonitor | None = None
        self._reference: Callable[[str, dict[str, Any]], None] | None = None

    def install(self) -> None:
        if self.name == "otel_perf":
            self._monitor = GcPauseMonitor()
            self._monitor.start()
        elif self.name == "reference":
            self._reference = _make_reference_callback()
            gc.callbacks.append(self._reference)

    def remove(self) -> None:
        if self._monitor is not None:
            self._monitor.stop()
            self._monitor = None
        if self._reference is not None:
            gc.callbacks.remove(self._reference)
            self._reference = None


@pytest.fixture
def frozen_heap() -> Iterator[None]:
    # Move everything alive now out of the collector's reach: otherwise an occasional full collection over
    # the whole test process makes the comparison bimodal (the reference measurement did the same).
    # Other callbacks (the instrumentor of the collection benchmarks, when its module fixture is alive)
    # are set aside, so that "none" really has none.
    others = list(gc.callbacks)
    gc.callbacks.clear()
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()
    gc.callbacks.extend(others)


@pytest.mark.parametrize("variant", ["none", "reference", "otel_perf"])
@pytest.mark.benchmark(group="gc-callback")
def test_gc_callback(benchmark: Any, frozen_heap: None, variant: str) -> None:
    """Allocation-heavy op with no callback (baseline), the reference callback, and otel-perf's."""
    chosen = _Variant(variant)
    chosen.install()
    try:
        benchmark(_allocation_heavy)
    finally:
        chosen.remove()


def _time_block(ops: int) -> int:
    start = perf_counter_ns()
    for _ in range(ops):
        _allocation_heavy()
    return perf_counter_ns() - start


@pytest.mark.benchmark(group="gc-callback-paired")
def test_gc_callback_paired_ratios(benchmark: Any, frozen_heap: None, capsys: Any) -> None:
    """Round-robin blocks of the three variants; medians of the paired ratios against 'none'."""
    names = ["none", "reference", "otel_perf"]
    ops = 20
    repeats = 45
    samples: dict[str, list[int]] = {name: [] for name in names}

    def run() -> None:
        _time_block(ops)  # warm-up
        for repeat in range(repeats):
            order = names[repeat % 3:] + names[:repeat % 3]  # rotate so no variant always goes first
            for name in order:
                variant = _Variant(name)
                variant.install()
                try:
                    samples[name].append(_time_block(ops))
                finally:
                    variant.remove()

    benchmark.pedantic(run, rounds=1, iterations=1)
    result = _ratios(samples)
    result["op_none_us"] = round(statistics.median(samples["none"]) / ops / 1000, 1)
    result["collections_per_op"] = _collections_per_op()
    benchmark.extra_info.update(result)
    with capsys.disabled():
        print(f"\n[gc-callback paired medians] {result}")


def _ratios(samples: dict[str, list[int]]) -> dict[str, Any]:
    """Medians of the paired ratios, and of the paired excess ratio (otel-perf's added time over the
    reference's added time, both against no callback)."""
    none, ref, ours = samples["none"], samples["reference"], samples["otel_perf"]
    excess = [(o - n) / (r - n) for n, r, o in zip(none, ref, ours, strict=True) if r > n]
    return {
        "reference_vs_none": round(statistics.median(r / n for r, n in zip(ref, none, strict=True)), 4),
        "otel_perf_vs_none": round(statistics.median(o / n for o, n in zip(ours, none, strict=True)), 4),
        "otel_perf_vs_reference": round(statistics.median(o / r for o, r in zip(ours, ref, strict=True)), 4),
        "otel_perf_added_vs_reference_added": round(statistics.median(excess), 3) if excess else None,
    }


@pytest.mark.benchmark(group="gc-callback-paired")
def test_gc_callback_cost_per_collection_paired(benchmark: Any, frozen_heap: None, capsys: Any) -> None:
    """gc.collect(0) on an empty young generation, round-robin: what one collection's callback costs."""
    names = ["none", "reference", "otel_perf"]
    calls = 5000
    samples: dict[str, list[int]] = {name: [] for name in names}
    collect = gc.collect

    def run() -> None:
        for repeat in range(45):
            order = names[repeat % 3:] + names[:repeat % 3]
            for name in order:
                variant = _Variant(name)
                variant.install()
                try:
                    start = perf_counter_ns()
                    for _ in range(calls):
                        collect(0)
                    samples[name].append(perf_counter_ns() - start)
                finally:
                    variant.remove()

    benchmark.pedantic(run, rounds=1, iterations=1)
    result = _ratios(samples)
    for name in names:
        result[f"{name}_ns_per_collection"] = round(statistics.median(samples[name]) / calls, 1)
    benchmark.extra_info.update(result)
    with capsys.disabled():
        print(f"\n[gc-callback per collection, paired medians] {result}")


def _collections_per_op() -> list[float]:
    before = [s["collections"] for s in gc.get_stats()]
    ops = 50
    for _ in range(ops):
        _allocation_heavy()
    after = [s["collections"] for s in gc.get_stats()]
    return [round((a - b) / ops, 2) for a, b in zip(after, before, strict=True)]


@pytest.mark.benchmark(group="runtime-collection-paired")
def test_collection_paired_ratio(benchmark: Any, system_metrics_reader: InMemoryMetricReader,
                                 otel_perf_reader: InMemoryMetricReader, capsys: Any) -> None:
    """Round-robin collections of both; median of paired ratios (otel-perf / system_metrics)."""
    ratios: list[float] = []
    costs: dict[str, list[float]] = {"system_metrics": [], "otel_perf": []}

    def timed(reader: InMemoryMetricReader, n: int = 20) -> float:
        start = time.perf_counter()
        for _ in range(n):
            reader.get_metrics_data()
        return (time.perf_counter() - start) / n

    def run() -> None:
        for repeat in range(25):
            pair = [("system_metrics", system_metrics_reader), ("otel_perf", otel_perf_reader)]
            if repeat % 2:
                pair.reverse()
            got = {name: timed(reader) for name, reader in pair}
            for name, cost in got.items():
                costs[name].append(cost)
            ratios.append(got["otel_perf"] / got["system_metrics"])

    benchmark.pedantic(run, rounds=1, iterations=1)
    result = {
        "otel_perf_vs_system_metrics": round(statistics.median(ratios), 4),
        "system_metrics_us": round(statistics.median(costs["system_metrics"]) * 1e6, 1),
        "otel_perf_us": round(statistics.median(costs["otel_perf"]) * 1e6, 1),
        "system_metrics_points": _points(system_metrics_reader),
        "otel_perf_points": _points(otel_perf_reader),
    }
    benchmark.extra_info.update(result)
    with capsys.disabled():
        print(f"\n[runtime-collection paired medians] {result}")
