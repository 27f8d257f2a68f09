"""End to end: a program under opentelemetry-instrument sends every runtime metric to a real OTLP receiver."""

from __future__ import annotations

import json
import subprocess
import textwrap
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from otel_perf import _semconv
from otel_perf.instrumentations._runtime_process import HeapReader
from otel_perf.testing import OTLPReceiver
from tests.conftest import BIN, clean_env

APP = textwrap.dedent(
    """
    import asyncio, gc, json, threading, time
    from opentelemetry import metrics

    async def main():
        sleepers = [asyncio.create_task(asyncio.sleep(1.5)) for _ in range(3)]
        await asyncio.sleep(0.3)
        time.sleep(0.3)  # blocks the event loop: the lag probe runs late
        await asyncio.gather(*sleepers)

    asyncio.run(main())

    release = threading.Event()
    burst = [threading.Thread(target=release.wait) for _ in range(20)]
    for thread in burst:
        thread.start()
    release.set()
    for thread in burst:
        thread.join()

    garbage = [[[] for _ in range(1000)] for _ in range(50)]  # automatic collections
    del garbage

    gc.disable()  # from here on only the explicit collections below happen
    provider = metrics.get_meter_provider()
    provider.force_flush()
    before = [s["collections"] for s in gc.get_stats()]
    for generation, times in ((0, 3), (1, 2), (2, 4)):
        for _ in range(times):
            gc.collect(generation)
    after = [s["collections"] for s in gc.get_stats()]
    print(json.dumps({"before": before, "after": after}))
    # Exit: the launcher's shutdown exports once more, with gc still disabled.
    """
)

_KIND = {"gauge": "gauge", "histogram": "histogram"}


def _kind(point: Any) -> str:
    if point.type == "sum":
        return "counter" if point.monotonic else "updowncounter"
    return _KIND.get(point.type, point.type)


@pytest.mark.e2e
def test_every_runtime_metric_reaches_the_otlp_receiver(otlp_receiver: OTLPReceiver, tmp_path: Path) -> None:
    """Each runtime metric arrives with its unit, type and attributes; GC pause counts match collections.
    (contrib's system_metrics, installed with the test extra, is switched off here: with it on, it reports
    the process.* and cpython.gc.* names it shares with otel-perf; the next test covers that.)"""
    app = tmp_path / "app.py"
    app.write_text(APP)
    env = clean_env(
        **{**otlp_receiver.env("grpc"), "OTEL_METRIC_EXPORT_INTERVAL": "300"},
        OTEL_SERVICE_NAME="runtime-e2e",
        OTEL_PERF_EVENTLOOP_LAG_INTERVAL="0.05",
        OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="system_metrics",
    )
    done = subprocess.run([str(BIN / "opentelemetry-instrument"), str(BIN / "python"), str(app)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    stats = json.loads(done.stdout.strip().splitlines()[-1])

    def ours(name: str) -> list[Any]:
        return [p for p in otlp_receiver.metric_points(name)
                if p.scope == "otel_perf" and p.resource.get("service.name") == "runtime-e2e"]

    expected = [s for s in _semconv.METRICS if s.group == "runtime"]
    if not HeapReader().available:
        expected = [s for s in expected if not s.name.startswith("otel_perf.heap.")]
    for spec in expected:
        points = ours(spec.name)
        assert points, f"{spec.name} never arrived"
        assert {p.unit for p in points} == {spec.unit}, spec.name
        assert {_kind(p) for p in points} == {spec.instrument}, spec.name
        assert {tuple(sorted(p.attributes)) for p in points} == {tuple(sorted(spec.attributes))}, spec.name

    assert max(p.max or 0.0 for p in ours("otel_perf.eventloop.lag")) >= 0.25
    assert max(p.value or 0 for p in ours("otel_perf.asyncio.task.count")) >= 3
    assert max(p.value or 0 for p in ours("otel_perf.thread.peak")) >= 21
    assert max(p.value or 0 for p in ours("otel_perf.gc.pause.max")) > 0.0

    # Per export (one collection time): collections counted by CPython and pauses measured by the callback.
    collections: dict[int, dict[int, int]] = defaultdict(dict)
    pauses: dict[int, dict[int, int]] = defaultdict(dict)
    for p in ours("cpython.gc.collections"):
        collections[p.time][p.attributes["cpython.gc.generation"]] = int(p.value or 0)
    for p in ours("otel_perf.gc.pause.duration"):
        pauses[p.time][p.attributes["cpython.gc.generation"]] = int(p.count or 0)
    # The last export before the explicit collections (the force_flush, taken with gc disabled).
    first = max(t for t, c in collections.items() if [c.get(g, 0) for g in range(3)] == stats["before"])
    last = max(collections)
    assert [collections[last][g] for g in range(3)] == stats["after"]
    observed = [stats["after"][g] - stats["before"][g] for g in range(3)]
    assert observed == [3, 2, 4]
    measured = [pauses[last].get(g, 0) - pauses[first].get(g, 0) for g in range(3)]
    assert measured == observed
    # Automatic collections before that were measured too.
    assert pauses[first].get(0, 0) > 0


SHARED_APP = textwrap.dedent("""
    import gc, time
    from opentelemetry import metrics
    gc.collect()
    time.sleep(0.5)
    metrics.get_meter_provider().force_flush()
""")


@pytest.mark.e2e
@pytest.mark.parametrize("excluded", ["", "process.memory.*,cpython.gc.*"], ids=["defaults", "excluded"])
def test_each_metric_name_comes_from_one_scope_beside_system_metrics(
    excluded: str, otlp_receiver: OTLPReceiver, tmp_path: Path
) -> None:
    """With contrib's system_metrics instrumentation really active under the launcher, every metric name
    arrives under one scope: the names system-metrics reports come from it alone, the rest (and the names
    its configuration leaves out, OTEL_PYTHON_SYSTEM_METRICS_EXCLUDED_METRICS) from otel-perf."""
    from otel_perf.instrumentations._runtime_system_metrics import SHARED_NAMES

    (tmp_path / "app.py").write_text(SHARED_APP)
    # Collections every 20 ms: some happen while the launcher is still loading its instrumentors.
    env = clean_env(**{**otlp_receiver.env("grpc"), "OTEL_METRIC_EXPORT_INTERVAL": "20"},
                    OTEL_SERVICE_NAME="scopes-e2e", OTEL_PYTHON_SYSTEM_METRICS_EXCLUDED_METRICS=excluded)
    done = subprocess.run([str(BIN / "opentelemetry-instrument"), str(BIN / "python"), "app.py"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    scopes: dict[str, set[str]] = defaultdict(set)
    for point in otlp_receiver.metric_points():
        scopes[point.name].add(point.scope)
    contrib = "opentelemetry.instrumentation.system_metrics"
    assert {name: names for name, names in scopes.items() if len(names) > 1} == {}
    left_out = {n for n in SHARED_NAMES if n.startswith(("process.memory.", "cpython.gc."))} if excluded else set()
    for name in SHARED_NAMES:
        assert scopes[name] == ({"otel_perf"} if name in left_out else {contrib}), name
    assert scopes["process.uptime"] == scopes["otel_perf.gc.pause.duration"] == {"otel_perf"}
