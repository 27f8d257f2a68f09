"""End to end: a program under opentelemetry-instrument reports every memory-pressure metric to a real
OTLP receiver, and a pressure event (with its warning log) when the limit is lowered below usage."""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest

from otel_perf import MemoryMonitor
from otel_perf._config import load_settings
from tests.conftest import BIN, clean_env

pytestmark = pytest.mark.e2e

UNITS = {
    "otel_perf.memory.limit": "By",
    "otel_perf.memory.usage": "By",
    "otel_perf.memory.pressure": "1",
    "otel_perf.memory.pressure.events": "{event}",
    "otel_perf.memory.cleanup.freed": "By",
    "otel_perf.memory.psi": "1",
    "otel_perf.process_tree.memory.usage": "By",
    "otel_perf.process_tree.memory.peak": "By",
    "otel_perf.buffer_pool.hits": "{buffer}",
    "otel_perf.buffer_pool.misses": "{buffer}",
    "otel_perf.buffer_pool.in_use": "{buffer}",
}

APP = textwrap.dedent("""
    import time
    from otel_perf import BufferPool
    from otel_perf.instrumentations.memory import MemoryInstrumentor

    monitor = MemoryInstrumentor().monitor
    assert monitor is not None and monitor.running, "the launcher did not start the memory monitor"

    def wait(predicate, what):
        deadline = time.monotonic() + 20
        while not predicate():
            if time.monotonic() > deadline:
                raise SystemExit("timed out waiting for " + what)
            time.sleep(0.05)

    time.sleep(1.0)  # normal checks and exports first
    usage = monitor.read().usage
    monitor.set_limit(max(1, usage // 2))  # the limit drops below current usage
    wait(lambda: monitor.high, "pressure high")
    time.sleep(1.0)
    monitor.set_limit(usage * 100)
    wait(lambda: not monitor.high, "recovery")
    pool = BufferPool()
    for _ in range(3):
        with pool.buffer() as buf:
            buf[0] = 1
    time.sleep(1.0)
    print("done", usage)
""")


def run_app(tmp_path: Path, receiver: Any, app: str, **env: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "app.py"
    script.write_text(app)
    environment = clean_env(
        **receiver.env("grpc"),
        OTEL_PYTHON_DISTRO="otel_perf",
        OTEL_SERVICE_NAME="memory-e2e",
        OTEL_PYTHON_LOGGING_AUTO_INSTRUMENTATION_ENABLED="true",
        **env,
    )
    result = subprocess.run([str(BIN / "opentelemetry-instrument"), "python", str(script)],
                            env=environment, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result


def test_every_memory_metric_and_a_pressure_event_reach_the_receiver(tmp_path: Path,
                                                                     otlp_receiver: Any) -> None:
    """Lowering the limit below usage gives a `high` event, a warning log, cleanup, then `recovered`."""
    result = run_app(tmp_path, otlp_receiver, APP, OTEL_PERF_MEMORY_LIMIT="64GiB",
                     OTEL_PERF_MEMORY_CHECK_INTERVAL="0.1", OTEL_PERF_MEMORY_CLEANUP="true")
    usage = int(result.stdout.split()[-1])
    expect_psi = MemoryMonitor(settings=load_settings({})).read().psi is not None
    otlp_receiver.wait_for(lambda r: r.metric_points("otel_perf.buffer_pool.hits"), timeout=20)

    for name, unit in UNITS.items():
        points = otlp_receiver.metric_points(name)
        if name == "otel_perf.memory.psi" and not expect_psi:
            assert points == []
            continue
        assert points, f"{name} never arrived"
        assert {p.unit for p in points} == {unit}, name
        assert all(p.resource.get("service.name") == "memory-e2e" for p in points)

    limits = otlp_receiver.metric_points("otel_perf.memory.limit")
    assert {p.attributes["otel_perf.memory.limit.source"] for p in limits} == {"config"}
    assert {p.value for p in limits} >= {64 * 1024**3, max(1, usage // 2), usage * 100}
    pressures = [p.value for p in otlp_receiver.metric_points("otel_perf.memory.pressure")]
    assert max(pressures) > 1.0 and min(pressures) < 0.8
    events = {p.attributes["otel_perf.memory.pressure.state"]: p.value
              for p in otlp_receiver.latest_points("otel_perf.memory.pressure.events")}
    assert events == {"high": 1, "recovered": 1}
    for name in ("otel_perf.memory.usage", "otel_perf.process_tree.memory.usage",
                 "otel_perf.memory.cleanup.freed"):
        assert all(p.attributes == {} for p in otlp_receiver.metric_points(name)), name
    [peak] = otlp_receiver.latest_points("otel_perf.process_tree.memory.peak")
    tree = otlp_receiver.metric_points("otel_perf.process_tree.memory.usage")
    assert peak.value >= max(p.value for p in tree)
    hits = otlp_receiver.latest_points("otel_perf.buffer_pool.hits")
    misses = otlp_receiver.latest_points("otel_perf.buffer_pool.misses")
    # exactly: the export at exit must not count a live pool twice
    assert (hits[0].value, misses[0].value) == (2, 1)

    otlp_receiver.wait_for(lambda r: any("memory pressure high" in str(rec.body) for rec in r.logs()), 20)
    [warning] = [rec for rec in otlp_receiver.logs() if "memory pressure high" in str(rec.body)]
    assert 13 <= warning.severity_number <= 16  # OpenTelemetry's WARN range


def test_a_configured_limit_below_usage_fires_at_start(tmp_path: Path, otlp_receiver: Any) -> None:
    """OTEL_PERF_MEMORY_LIMIT=1MiB: the first check counts a `high` event and the program runs on."""
    app = "import time\ntime.sleep(1.5)\nprint('ok')\n"
    result = run_app(tmp_path, otlp_receiver, app, OTEL_PERF_MEMORY_LIMIT="1MiB")
    assert result.stdout.strip() == "ok"
    otlp_receiver.wait_for(lambda r: r.latest_points("otel_perf.memory.pressure.events"), timeout=20)
    [event] = otlp_receiver.latest_points("otel_perf.memory.pressure.events")
    assert (event.attributes, event.value) == ({"otel_perf.memory.pressure.state": "high"}, 1)
    [limit] = otlp_receiver.latest_points("otel_perf.memory.limit")
    assert (limit.value, limit.attributes) == (1024 * 1024, {"otel_perf.memory.limit.source": "config"})
    assert "memory pressure high" in result.stderr or any(
        "memory pressure high" in str(rec.body) for rec in otlp_receiver.logs())
