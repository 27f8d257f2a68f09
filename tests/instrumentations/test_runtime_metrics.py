"""RuntimeInstrumentor: every runtime metric of docs/telemetry.md, one reading per collection, GC pauses, peaks."""

from __future__ import annotations

import gc
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import Gauge, Histogram, InMemoryMetricReader, Sum

from otel_perf import _semconv
from otel_perf._config import load_settings
from otel_perf.instrumentations import runtime as runtime_module
from otel_perf.instrumentations._runtime_gc import GENERATIONS
from otel_perf.instrumentations._runtime_process import HeapReader
from otel_perf.instrumentations.runtime import RuntimeInstrumentor
from otel_perf.testing import metric_points

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "runtime"
RUNTIME_SPECS = [spec for spec in _semconv.METRICS if spec.group == "runtime"]


def _instrument(provider: MeterProvider, **kwargs: Any) -> RuntimeInstrumentor:
    instrumentor = RuntimeInstrumentor()
    instrumentor.instrument(meter_provider=provider,
                            settings=load_settings({}, eventloop_lag_interval=0.05), **kwargs)
    return instrumentor


@pytest.fixture
def runtime(meter_provider: MeterProvider) -> Iterator[RuntimeInstrumentor]:
    instrumentor = _instrument(meter_provider)
    yield instrumentor
    instrumentor.uninstrument()


def _metrics(reader: InMemoryMetricReader) -> dict[str, Any]:
    data = reader.get_metrics_data()
    assert data is not None
    return {m.name: m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}


def _kind(data: Any) -> str:
    if isinstance(data, Histogram):
        return "histogram"
    if isinstance(data, Gauge):
        return "gauge"
    assert isinstance(data, Sum)
    return "counter" if data.is_monotonic else "updowncounter"


def _by_attr(points: list[Any], key: str) -> dict[Any, Any]:
    return {p.attributes[key]: p for p in points}


def test_every_runtime_metric_has_its_name_instrument_unit_and_attributes(
    runtime: RuntimeInstrumentor, metric_reader: InMemoryMetricReader
) -> None:
    """Each metric of docs/telemetry.md's Runtime table arrives with its instrument type, unit and attribute keys."""
    gc.collect()
    metrics = _metrics(metric_reader)
    heap = ("otel_perf.heap.allocated", "otel_perf.heap.reserved")
    expected = [s for s in RUNTIME_SPECS if HeapReader().available or s.name not in heap]
    expected = [s for s in expected if s.name != "otel_perf.eventloop.lag"]  # needs a running loop: below
    missing = [s.name for s in expected if s.name not in metrics]
    assert not missing
    for spec in expected:
        metric = metrics[spec.name]
        assert (spec.name, metric.unit, _kind(metric.data)) == (spec.name, spec.unit, spec.instrument)
        keys = {tuple(sorted(p.attributes)) for p in metric.data.data_points}
        assert keys == {tuple(sorted(spec.attributes))}, spec.name
    assert set(_by_attr(list(metrics["process.cpu.time"].data.data_points), "cpu.mode")) == {"user", "system"}
    assert set(_by_attr(list(metrics["process.context_switches"].data.data_points),
                        "process.context_switch.type")) == {"voluntary", "involuntary"}
    assert set(_by_attr(list(metrics["cpython.gc.collections"].data.data_points),
                        "cpython.gc.generation")) == set(GENERATIONS)
    assert not [n for n in metrics if n.startswith("process.runtime.")]  # no deprecated names


def test_all_values_come_from_one_reading_per_collection(
    runtime: RuntimeInstrumentor, metric_reader: InMemoryMetricReader
) -> None:
    """The process is read once per collection, however many instruments report from that reading."""
    collector = runtime_module._collector
    assert collector is not None
    before = collector.readings_taken
    for _ in range(3):
        metric_reader.get_metrics_data()
    assert collector.readings_taken - before == 3


def test_process_values_are_plausible(runtime: RuntimeInstrumentor,
                                      metric_reader: InMemoryMetricReader) -> None:
    """CPU time grows with work, memory and uptime are positive, the peak RSS is at least the current RSS."""
    first = _metrics(metric_reader)
    deadline = time.process_time() + 0.2
    while time.process_time() < deadline:
        pass
    second = _metrics(metric_reader)

    def value(metrics: dict[str, Any], name: str, **attrs: Any) -> float:
        for point in metrics[name].data.data_points:
            if dict(point.attributes) == attrs:
                return float(point.value)
        raise AssertionError(f"{name} {attrs} missing")

    used = sum(value(second, "process.cpu.time", **{"cpu.mode": mode})
               - value(first, "process.cpu.time", **{"cpu.mode": mode}) for mode in ("user", "system"))
    assert used >= 0.15
    assert value(second, "process.memory.usage") > 10 * 1024 * 1024
    assert value(second, "process.memory.virtual") >= value(second, "process.memory.usage")
    assert value(second, "otel_perf.memory.peak") >= value(second, "process.memory.usage")
    assert value(second, "process.thread.count") >= 1
    assert value(second, "process.unix.file_descriptor.count") >= 3
    assert value(second, "process.uptime") > value(first, "process.uptime")
    assert value(second, "otel_perf.python.allocated_blocks") > 1000


def test_cpu_utilization_is_over_the_cgroup_quota(
    meter_provider: MeterProvider, metric_reader: InMemoryMetricReader
) -> None:
    """With a quota of half a CPU, busy CPU time is divided by half the elapsed wall time."""
    instrumentor = _instrument(meter_provider, root=FIXTURES / "v2_quota")
    try:
        collector = runtime_module._collector
        assert collector is not None and collector.limit.cpus == 0.5
        first = collector.refresh()
        deadline = time.process_time() + 0.3
        while time.process_time() < deadline:
            pass
        second = collector.refresh()
        elapsed = second.process.monotonic - first.process.monotonic
        user = second.process.cpu_user - first.process.cpu_user
        system = second.process.cpu_system - first.process.cpu_system
        assert second.utilization == pytest.approx((user / (elapsed * 0.5), system / (elapsed * 0.5)))
        # No timing bound (the machine is shared): only that busy CPU shows and the scale is the quota's.
        assert 0.0 < sum(second.utilization) <= len(os.sched_getaffinity(0)) / 0.5 + 0.05
        points = _by_attr(metric_points(metric_reader, "process.cpu.utilization"), "cpu.mode")
        assert points["user"].value >= 0.0 and points["system"].value >= 0.0
    finally:
        instrumentor.uninstrument()


def test_real_gc_collections_produce_pause_measurements_one_per_collection(
    runtime: RuntimeInstrumentor, metric_reader: InMemoryMetricReader
) -> None:
    """Each gc.collect(n) adds one pause to generation n; counts equal the collections gc.get_stats() saw."""
    was_enabled = gc.isenabled()
    gc.disable()  # only the collections below happen, so the expected counts are exact
    try:
        before = {p.attributes["cpython.gc.generation"]: p.count
                  for p in metric_points(metric_reader, "otel_perf.gc.pause.duration")}
        stats_before = [s["collections"] for s in gc.get_stats()]
        for generation, times in ((0, 4), (1, 2), (2, 3)):
            for _ in range(times):
                gc.collect(generation)
        stats_after = [s["collections"] for s in gc.get_stats()]
        data = metric_reader.get_metrics_data()
    finally:
        if was_enabled:
            gc.enable()
    points = _by_attr(metric_points(data, "otel_perf.gc.pause.duration"), "cpython.gc.generation")
    # gc.collect(n) collects n and every younger generation but counts only n in get_stats.
    assert [stats_after[g] - stats_before[g] for g in GENERATIONS] == [4, 2, 3]
    for generation in GENERATIONS:
        observed = stats_after[generation] - stats_before[generation]
        assert points[generation].count - before.get(generation, 0) == observed
    assert points[2].max > 0.0
    assert points[2].sum > 0.0
    maxima = _by_attr(metric_points(data, "otel_perf.gc.pause.max"), "cpython.gc.generation")
    assert 0.0 < maxima[2].value <= points[2].max
    # The max is per collection window: nothing happened since the previous collection.
    maxima = _by_attr(metric_points(metric_reader, "otel_perf.gc.pause.max"), "cpython.gc.generation")
    assert maxima[2].value == 0.0


def test_automatic_collections_are_all_measured(meter_provider: MeterProvider,
                                                metric_reader: InMemoryMetricReader) -> None:
    """Allocation-heavy code triggers many automatic collections; the histogram counts every one of them."""

    def counts(data: Any) -> dict[int, int]:
        points = metric_points(data, "otel_perf.gc.pause.duration")
        return {p.attributes["cpython.gc.generation"]: p.count for p in points}

    gc.disable()  # collections happen only inside the loop below, where both sides see them
    instrumentor = _instrument(meter_provider)
    try:
        counts_before = counts(metric_reader.get_metrics_data())
        stats_before = [s["collections"] for s in gc.get_stats()]
        gc.enable()
        junk = []
        for _ in range(200):
            junk.append([[] for _ in range(1000)])
            if len(junk) > 20:
                junk.clear()
        gc.disable()
        stats_after = [s["collections"] for s in gc.get_stats()]
        counts_after = counts(metric_reader.get_metrics_data())
    finally:
        gc.enable()
        instrumentor.uninstrument()
    observed = [stats_after[g] - stats_before[g] for g in GENERATIONS]
    assert observed[0] > 50
    assert [counts_after.get(g, 0) - counts_before.get(g, 0) for g in GENERATIONS] == observed


def test_thread_peak_catches_a_burst_between_collections(
    runtime: RuntimeInstrumentor, metric_reader: InMemoryMetricReader
) -> None:
    """Thirty threads alive at once and gone before the collection still raise otel_perf.thread.peak."""
    baseline = threading.active_count()
    release = threading.Event()
    threads = [threading.Thread(target=release.wait) for _ in range(30)]
    for thread in threads:
        thread.start()
    release.set()
    for thread in threads:
        thread.join()
    assert threading.active_count() == baseline
    peak = metric_points(metric_reader, "otel_perf.thread.peak")[0].value
    assert peak >= baseline + 30
    assert metric_points(metric_reader, "process.thread.count")[0].value < baseline + 30


def test_heap_metrics_follow_a_large_allocation(runtime: RuntimeInstrumentor,
                                                metric_reader: InMemoryMetricReader) -> None:
    """otel_perf.heap.allocated grows by a 64 MiB allocation (glibc only)."""
    if not HeapReader().available:
        pytest.skip("glibc mallinfo2 is not available on this platform")
    before = metric_points(metric_reader, "otel_perf.heap.allocated")[0].value
    block = bytearray(64 * 1024 * 1024)
    after = metric_points(metric_reader, "otel_perf.heap.allocated")[0].value
    reserved = metric_points(metric_reader, "otel_perf.heap.reserved")[0].value
    assert after - before >= len(block)
    assert reserved >= after
    del block


def _scopes(reader: InMemoryMetricReader) -> dict[str, set[str]]:
    data = reader.get_metrics_data()
    assert data is not None
    found: dict[str, set[str]] = {}
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                found.setdefault(m.name, set()).add(sm.scope.name)
    return found


@pytest.mark.parametrize("system_metrics_first", [True, False], ids=["system-metrics-first", "otel-perf-first"])
def test_each_metric_name_comes_from_one_scope_beside_system_metrics(
    system_metrics_first: bool, meter_provider: MeterProvider, metric_reader: InMemoryMetricReader
) -> None:
    """contrib's SystemMetricsInstrumentor really instrumented on the same provider, in either order: the
    names it reports come from its scope only, also after its uninstrument() (which leaves its instruments
    reporting); otel-perf's other names stay otel-perf's."""
    from opentelemetry.instrumentation.system_metrics import SystemMetricsInstrumentor

    from otel_perf.instrumentations._runtime_system_metrics import SHARED_NAMES

    contrib_scope = "opentelemetry.instrumentation.system_metrics"
    system_metrics = SystemMetricsInstrumentor(config=None)  # its defaults: every shared name
    ours = RuntimeInstrumentor()
    first, second = (system_metrics, ours) if system_metrics_first else (ours, system_metrics)
    try:
        for instrumentor in (first, second):
            instrumentor.instrument(meter_provider=meter_provider,
                                    settings=load_settings({}, eventloop_lag_interval=0.05))
        scopes = _scopes(metric_reader)
        assert {name: found for name, found in scopes.items() if len(found) > 1} == {}
        assert {name: scopes.get(name) for name in SHARED_NAMES} == {name: {contrib_scope} for name in SHARED_NAMES}
        assert scopes["process.uptime"] == {"otel_perf"}

        system_metrics.uninstrument()
        scopes = _scopes(metric_reader)
        assert {name: found for name, found in scopes.items() if len(found) > 1} == {}
        assert {name: scopes.get(name) for name in SHARED_NAMES} == {name: {contrib_scope} for name in SHARED_NAMES}
    finally:
        ours.uninstrument()
        system_metrics.uninstrument()
        SystemMetricsInstrumentor(config=None)  # the singleton's default configuration for later tests


def test_names_left_out_of_system_metrics_configuration_stay_otel_perfs(
    meter_provider: MeterProvider, metric_reader: InMemoryMetricReader
) -> None:
    from opentelemetry.instrumentation.system_metrics import SystemMetricsInstrumentor

    system_metrics = SystemMetricsInstrumentor(config={"process.cpu.time": ["user", "system"]})
    ours = _instrument(meter_provider)
    try:
        system_metrics.instrument(meter_provider=meter_provider)
        scopes = _scopes(metric_reader)
        assert scopes["process.cpu.time"] == {"opentelemetry.instrumentation.system_metrics"}
        assert scopes["process.memory.usage"] == scopes["cpython.gc.collections"] == {"otel_perf"}
    finally:
        ours.uninstrument()
        system_metrics.uninstrument()
        SystemMetricsInstrumentor(config=None)


def test_system_metrics_on_another_provider_takes_no_name_from_otel_perf(
    meter_provider: MeterProvider, metric_reader: InMemoryMetricReader
) -> None:
    """Two MeterProviders in one process: system-metrics reporting to the other one leaves every name of
    otel-perf's on this one (each provider gets each name once)."""
    from opentelemetry.instrumentation.system_metrics import SystemMetricsInstrumentor

    from otel_perf.instrumentations._runtime_system_metrics import SHARED_NAMES

    other_reader = InMemoryMetricReader()
    other = MeterProvider(metric_readers=[other_reader])
    system_metrics = SystemMetricsInstrumentor(config=None)
    ours = _instrument(meter_provider)
    try:
        system_metrics.instrument(meter_provider=other)
        assert set(_scopes(metric_reader)) >= SHARED_NAMES
        assert {name for name, found in _scopes(metric_reader).items() if found != {"otel_perf"}} == set()
        assert set(_scopes(other_reader)) >= SHARED_NAMES
    finally:
        ours.uninstrument()
        system_metrics.uninstrument()
        SystemMetricsInstrumentor(config=None)
        other.shutdown()


def test_names_wait_for_system_metrics_while_the_launcher_is_loading_instrumentors() -> None:
    """Between the launcher's pre- and post-instrument hooks, a system-metrics about to be instrumented
    already has its default names (so a collection in that window exports none of them twice); not when
    it is disabled, and not once the launcher is done."""
    from otel_perf.instrumentations import _runtime_system_metrics as shared

    try:
        shared.launcher_starting({})
        assert shared.reported_by_system_metrics() == shared.SHARED_NAMES
        shared.launcher_starting({"OTEL_PYTHON_SYSTEM_METRICS_EXCLUDED_METRICS": ""})
        shared.launcher_done()
        assert shared.reported_by_system_metrics() == frozenset()
        shared.launcher_starting({"OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "threading, system_metrics"})
        assert shared.reported_by_system_metrics() == frozenset()
    finally:
        shared.launcher_done()


_CHILD_PEAK = """
import json, resource
from otel_perf.instrumentations._runtime_process import ProcessSampler, own_peak_rss
from otel_perf.instrumentations.memory import process_tree_memory
print(json.dumps({"maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "own": own_peak_rss(), "sampled": ProcessSampler().sample().memory_peak,
                  "tree": process_tree_memory()[1]}))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="Linux /proc")
def test_peak_memory_of_a_program_started_by_a_large_parent_is_its_own() -> None:
    """Linux keeps ru_maxrss across exec: a small program started by a 300 MiB parent (a test runner, a
    service) begins with the parent's peak. otel_perf.memory.peak and the process-tree peak report the
    program's own peak instead."""
    import json
    import subprocess
    import sys

    ballast = bytearray(300 * 2**20)  # resident: bytearray() zero-fills
    try:
        done = subprocess.run([sys.executable, "-c", _CHILD_PEAK], capture_output=True, text=True, timeout=60,
                              check=True)
    finally:
        del ballast
    child = json.loads(done.stdout)
    assert child["maxrss"] > 250 * 2**20, "the kernel no longer passes the parent's peak on: test is moot"
    for key in ("own", "sampled", "tree"):
        assert child[key] < 150 * 2**20, (key, child)


def test_names_wait_for_system_metrics_while_its_module_is_still_being_imported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A collection that runs (in the metric reader's thread) while the launcher is importing
    system-metrics finds its module without its instrumentor class yet: the names are still left to it
    (that window exported each process and GC name under both scopes, about 1 run in 10 under load)."""
    import importlib.machinery
    import sys
    import types

    from otel_perf.instrumentations import _runtime_system_metrics as shared

    half_imported = types.ModuleType(shared._MODULE)
    half_imported.__spec__ = importlib.machinery.ModuleSpec(shared._MODULE, None)
    half_imported.__spec__._initializing = True  # type: ignore[attr-defined]  # what importlib sets meanwhile
    monkeypatch.setitem(sys.modules, shared._MODULE, half_imported)
    try:
        shared.launcher_starting({})
        assert shared.reported_by_system_metrics() == shared.SHARED_NAMES
    finally:
        shared.launcher_done()
    assert shared.reported_by_system_metrics() == frozenset()  # under configure(): not instrumented yet
