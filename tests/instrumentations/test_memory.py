"""MemoryMonitor's policy (threshold, hysteresis, events, cleanup) and MemoryInstrumentor's metrics.

The cgroup is a copy of the checked-in v2 fixture whose ``memory.current`` each test rewrites, so the
pressure is whatever the test says; the process-tree numbers are this real process and real children.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from otel_perf import MemoryMonitor
from otel_perf._config import load_settings
from otel_perf._process import ROOT_MARKER
from otel_perf.errors import ConfigError
from otel_perf.instrumentations.memory import MemoryInstrumentor, _psutil_tree_rss, process_tree_rss
from otel_perf.testing import metric_points

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "memory"
LIMIT = 536870912  # memory.max of the cgroup_v2 fixture
INACTIVE = 50000000  # its inactive_file
LEAF = "sys/fs/cgroup/app.slice/app.service"

MEMORY_METRICS = {
    "otel_perf.memory.limit": "By",
    "otel_perf.memory.usage": "By",
    "otel_perf.memory.pressure": "1",
    "otel_perf.memory.pressure.events": "{event}",
    "otel_perf.memory.cleanup.freed": "By",
    "otel_perf.memory.psi": "1",
    "otel_perf.process_tree.memory.usage": "By",
    "otel_perf.process_tree.memory.peak": "By",
}


class FakeCgroup:
    """A v2 cgroup tree whose pressure the test sets."""

    def __init__(self, root: Path) -> None:
        self.root = root
        shutil.copytree(FIXTURES / "cgroup_v2", root)

    def set_pressure(self, ratio: float) -> None:
        # Atomically, as the kernel's files change: the check thread may be reading it right now.
        tmp = self.root / LEAF / "memory.current.tmp"
        tmp.write_text(f"{int(ratio * LIMIT) + INACTIVE}\n")
        os.replace(tmp, self.root / LEAF / "memory.current")


@pytest.fixture
def cgroup(tmp_path: Path) -> FakeCgroup:
    return FakeCgroup(tmp_path / "root")


class FakeClock:
    """A monotonic clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def instrumentor(meter_provider: Any, cgroup: FakeCgroup, clock: FakeClock) -> Iterator[MemoryInstrumentor]:
    inst = MemoryInstrumentor()
    settings = load_settings({}, memory_check_interval=3600)
    inst.instrument(meter_provider=meter_provider, settings=settings, root=str(cgroup.root), clock=clock)
    # Let the check thread's first check (at start) finish, so it cannot race the test's own checks.
    deadline = time.monotonic() + 10
    while inst.monitor is not None and inst.monitor._decided < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    yield inst
    inst.uninstrument()


def make_monitor(cgroup: FakeCgroup, **kwargs: Any) -> MemoryMonitor:
    return MemoryMonitor(root=str(cgroup.root), settings=load_settings({}), **kwargs)


def events(reader: Any) -> dict[str, int]:
    return {p.attributes["otel_perf.memory.pressure.state"]: p.value
            for p in metric_points(reader, "otel_perf.memory.pressure.events")}


def test_crossing_the_threshold_warns_once_and_counts_a_high_event(
    instrumentor: MemoryInstrumentor, cgroup: FakeCgroup, metric_reader: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The first check at or above the threshold logs a warning on `otel_perf` and counts `high`."""
    monitor = instrumentor.monitor
    assert monitor is not None
    cgroup.set_pressure(0.5)
    assert monitor.check() is False
    cgroup.set_pressure(0.9)
    with caplog.at_level(logging.WARNING, logger="otel_perf"):
        assert monitor.check() is True
        assert monitor.check() is True  # still high: no second warning, no second event
    warnings_logged = [r for r in caplog.records if r.name == "otel_perf" and r.levelno == logging.WARNING]
    assert len(warnings_logged) == 1
    assert "memory pressure high" in warnings_logged[0].getMessage()
    assert events(metric_reader) == {"high": 1}


def test_hysteresis_keeps_a_hovering_value_from_firing_again(
    instrumentor: MemoryInstrumentor, cgroup: FakeCgroup, metric_reader: Any,
) -> None:
    """Pressure hovering around the threshold counts one crossing; recovery needs threshold - margin."""
    monitor = instrumentor.monitor
    assert monitor is not None
    for ratio in (0.81, 0.79, 0.81, 0.78, 0.80, 0.76):  # threshold 0.8, margin 0.05
        cgroup.set_pressure(ratio)
        assert monitor.check() is True
    assert events(metric_reader) == {"high": 1}
    cgroup.set_pressure(0.74)
    assert monitor.check() is False
    assert events(metric_reader) == {"high": 1, "recovered": 1}
    cgroup.set_pressure(0.85)
    assert monitor.check() is True
    assert events(metric_reader) == {"high": 2, "recovered": 1}


def test_cleanup_collects_garbage_and_reports_bytes_freed(metric_reader: Any, meter_provider: Any,
                                                          cgroup: FakeCgroup) -> None:
    """cleanup() runs gc.collect() (reference cycles holding real memory are freed) and returns bytes."""
    monitor = make_monitor(cgroup)
    monitor._bind(meter_provider.get_meter("test"))
    try:
        for _ in range(4):
            cycle: list[Any] = [bytearray(b"x") * (16 * 1024 * 1024)]
            cycle.append(cycle)  # only the cycle collector can free it
        del cycle
        freed = monitor.cleanup()
    finally:
        monitor._unbind()
    assert freed >= 32 * 1024 * 1024
    assert sum(p.value for p in metric_points(metric_reader, "otel_perf.memory.cleanup.freed")) == freed


def test_cleanup_runs_on_crossing_only_when_enabled(cgroup: FakeCgroup, meter_provider: Any,
                                                    metric_reader: Any) -> None:
    """With cleanup on, the crossing runs it (the freed counter appears); with it off, it does not."""
    for enabled in (False, True):
        monitor = make_monitor(cgroup, cleanup=enabled)
        monitor._bind(meter_provider.get_meter("test"))
        cgroup.set_pressure(0.1)
        monitor.check()
        cgroup.set_pressure(0.95)
        monitor.check()
        monitor._unbind()
        assert bool(metric_points(metric_reader, "otel_perf.memory.cleanup.freed")) is enabled


def test_lowering_the_limit_below_usage_fires_an_event(instrumentor: MemoryInstrumentor,
                                                       metric_reader: Any) -> None:
    """set_limit() below the current usage makes the next check high, with the config source.

    A configured limit applies to the process tree's RSS (not to the cgroup's usage).
    """
    monitor = instrumentor.monitor
    assert monitor is not None
    assert monitor.check() is False
    usage = process_tree_rss()
    monitor.set_limit(usage // 2)
    assert monitor.check() is True
    assert events(metric_reader) == {"high": 1}
    [limit] = metric_points(metric_reader, "otel_perf.memory.limit")
    assert limit.attributes == {"otel_perf.memory.limit.source": "config"}
    assert limit.value == usage // 2
    assert metric_points(metric_reader, "otel_perf.memory.pressure")[0].value > 1.0
    monitor.set_limit(None)
    assert monitor.read().limit == LIMIT


def test_instrumentor_reports_every_memory_metric_with_unit_and_attributes(
    instrumentor: MemoryInstrumentor, cgroup: FakeCgroup, metric_reader: Any,
) -> None:
    """All eight metrics of docs/telemetry.md's table, with their units, attributes and the fixture's values."""
    monitor = instrumentor.monitor
    assert monitor is not None
    monitor.cleanup_enabled = True
    cgroup.set_pressure(0.1)
    monitor.check()
    cgroup.set_pressure(0.9)
    monitor.check()
    data = metric_reader.get_metrics_data()
    found = {m.name: m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
    for name, unit in MEMORY_METRICS.items():
        assert name in found, name
        assert found[name].unit == unit, name
    value = {name: metric_points(data, name)[0].value for name in MEMORY_METRICS}
    assert metric_points(data, "otel_perf.memory.limit")[0].attributes == {
        "otel_perf.memory.limit.source": "cgroup"}
    assert value["otel_perf.memory.limit"] == LIMIT
    assert value["otel_perf.memory.usage"] == int(0.9 * LIMIT)
    assert value["otel_perf.memory.pressure"] == pytest.approx(0.9, abs=1e-6)
    assert value["otel_perf.memory.psi"] == pytest.approx(0.125)
    assert value["otel_perf.process_tree.memory.peak"] >= value["otel_perf.process_tree.memory.usage"] > 0


def test_gauges_read_the_state_at_collection(instrumentor: MemoryInstrumentor, cgroup: FakeCgroup,
                                             metric_reader: Any, clock: FakeClock) -> None:
    """Observable metrics show the state when collected, not the state of the last check."""
    cgroup.set_pressure(0.2)
    first = metric_points(metric_reader, "otel_perf.memory.pressure")[0].value
    cgroup.set_pressure(0.6)
    clock.advance(1.0)  # past the window in which one collection's callbacks share a reading
    second = metric_points(metric_reader, "otel_perf.memory.pressure")[0].value
    assert (first, second) == (pytest.approx(0.2, abs=1e-6), pytest.approx(0.6, abs=1e-6))


def test_psi_is_absent_where_not_readable(meter_provider: Any, metric_reader: Any) -> None:
    """No PSI file: no psi point (rather than a made-up zero)."""
    inst = MemoryInstrumentor()
    inst.instrument(meter_provider=meter_provider, settings=load_settings({}, memory_check_interval=3600),
                    root=str(FIXTURES / "cgroup_v1"))
    try:
        assert metric_points(metric_reader, "otel_perf.memory.usage")
        assert metric_points(metric_reader, "otel_perf.memory.psi") == []
    finally:
        inst.uninstrument()


def test_process_tree_metrics_only_in_the_root_process(instrumentor: MemoryInstrumentor, metric_reader: Any,
                                                       monkeypatch: pytest.MonkeyPatch, clock: FakeClock) -> None:
    """A child of an otel-perf process (root marker from an ancestor) reports no process-tree metrics."""
    assert metric_points(metric_reader, "otel_perf.process_tree.memory.usage")
    monkeypatch.setenv(ROOT_MARKER, "1")  # as if pid 1 were the root of this tree
    clock.advance(1.0)  # past the window in which one collection's callbacks share a reading
    assert metric_points(metric_reader, "otel_perf.process_tree.memory.usage") == []
    assert metric_points(metric_reader, "otel_perf.process_tree.memory.peak") == []
    assert metric_points(metric_reader, "otel_perf.memory.usage")


def test_process_tree_usage_includes_descendants(tmp_path: Path) -> None:
    """A child holding 64 MiB raises the tree's RSS by about that much; the peak keeps it."""
    monitor = MemoryMonitor(limit="64GiB", settings=load_settings({}), root=str(FIXTURES / "empty"))
    before = monitor.read().usage
    ready = tmp_path / "ready"
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time, pathlib
        hold = bytearray(b"x") * (64 * 1024 * 1024)
        pathlib.Path({str(ready)!r}).write_text("1")
        time.sleep(30)
    """)])
    try:
        deadline = 200
        while not ready.exists() and deadline:
            deadline -= 1
            threading.Event().wait(0.05)
        during = monitor.read()
        by_psutil = _psutil_tree_rss()  # the portable path agrees with the /proc children walk
    finally:
        child.kill()
        child.wait(10)
    assert during.usage - before >= 48 * 1024 * 1024
    assert during.usage == during.process_tree_usage
    assert abs(by_psutil - during.usage) < 16 * 1024 * 1024
    after = monitor.read().usage
    assert monitor.process_tree_peak >= during.usage > after


def _own_peak() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def test_tree_peak_includes_the_root_processes_own_peak() -> None:
    """A spike of the root process that no reading saw still counts: the tree's peak is never below the
    process's own peak (the issue's run read a tree peak of 41 MiB against a process peak of 109 MiB)."""
    program = textwrap.dedent(f"""
        import json, resource
        from otel_perf._config import load_settings
        from otel_perf.instrumentations.memory import MemoryMonitor
        monitor = MemoryMonitor(limit="64GiB", settings=load_settings({{}}), root={str(FIXTURES / "empty")!r})
        block = bytearray(b"x") * (160 * 1024 * 1024)  # written, so resident
        del block  # a large block goes straight back to the system: RSS falls again
        reading = monitor.read()
        try:  # this image's own peak: ru_maxrss also holds what a large parent (the test runner) had
            status = open("/proc/self/status").read()
            own = int(status.split("VmHWM:")[1].split()[0]) * 1024
        except OSError:
            own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(json.dumps({{"peak": monitor.process_tree_peak, "usage": reading.process_tree_usage, "own": own}}))
    """)
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True)
    result = json.loads(done.stdout)
    assert result["own"] >= 160 * 1024 * 1024
    assert result["usage"] < result["own"] - 100 * 1024 * 1024  # no reading saw the spike...
    assert result["peak"] >= result["own"]  # ...and the tree's peak has it all the same


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="live descendants' peaks come from /proc")
def test_tree_peak_includes_a_live_childs_peak(tmp_path: Path) -> None:
    """A child that spiked and freed before any reading: its own peak (VmHWM) is a floor of the tree's."""
    spike = _own_peak() + 96 * 1024 * 1024  # larger than anything this process itself ever held
    monitor = MemoryMonitor(limit="64GiB", settings=load_settings({}), root=str(FIXTURES / "empty"))
    ready = tmp_path / "ready"
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time, pathlib
        block = bytearray(b"x") * {spike}
        del block
        pathlib.Path({str(ready)!r}).write_text("1")
        time.sleep(30)
    """)])
    try:
        for _ in range(400):
            if ready.exists():
                break
            time.sleep(0.05)
        reading = monitor.read()
    finally:
        child.kill()
        child.wait(10)
    assert reading.process_tree_usage is not None and reading.process_tree_usage < spike
    assert monitor.process_tree_peak >= spike


def test_tree_peak_includes_an_ended_childs_peak() -> None:
    """A child that spiked and ended between two readings (reaped): its peak still counts."""
    spike = _own_peak() + 96 * 1024 * 1024
    monitor = MemoryMonitor(limit="64GiB", settings=load_settings({}), root=str(FIXTURES / "empty"))
    subprocess.run([sys.executable, "-c", f"block = bytearray(b'x') * {spike}"], check=True, timeout=60)
    reading = monitor.read()
    assert reading.process_tree_usage is not None and reading.process_tree_usage < spike
    assert monitor.process_tree_peak >= spike


def test_uninstrument_stops_the_thread_and_the_metrics(meter_provider: Any, metric_reader: Any,
                                                       cgroup: FakeCgroup) -> None:
    """After uninstrument() no thread runs and no memory metric is reported."""
    inst = MemoryInstrumentor()
    inst.instrument(meter_provider=meter_provider, settings=load_settings({}), root=str(cgroup.root))
    monitor = inst.monitor
    assert monitor is not None and monitor.running
    assert metric_points(metric_reader, "otel_perf.memory.usage")
    inst.uninstrument()
    assert not monitor.running and inst.monitor is None
    assert not [t for t in threading.enumerate() if t.name == "otel-perf-memory"]
    assert metric_points(metric_reader, "otel_perf.memory.usage") == []


def test_instrument_twice_is_harmless_and_reinstrument_reports_the_new_monitor(
    meter_provider: Any, metric_reader: Any, cgroup: FakeCgroup
) -> None:
    """A second instrument() starts no second thread; after uninstrument, a new one reports again."""
    inst = MemoryInstrumentor()
    settings = load_settings({})
    inst.instrument(meter_provider=meter_provider, settings=settings, root=str(cgroup.root))
    first = inst.monitor
    inst.instrument(meter_provider=meter_provider, settings=settings, root=str(cgroup.root))
    assert inst.monitor is first
    assert len([t for t in threading.enumerate() if t.name == "otel-perf-memory"]) == 1
    inst.uninstrument()
    inst.instrument(meter_provider=meter_provider, settings=settings, root=str(FIXTURES / "cgroup_v1"))
    try:
        [limit] = metric_points(metric_reader, "otel_perf.memory.limit")
        assert limit.value == 1073741824  # the cgroup_v1 fixture, not the first monitor's
    finally:
        inst.uninstrument()


def test_monitor_pickles_as_its_configuration(cgroup: FakeCgroup) -> None:
    """A monitor sent to a process pool arrives configured alike, unbound and idle."""
    monitor = make_monitor(cgroup, limit="1GiB", threshold=0.9, cleanup=True, hysteresis=0.1)
    copy = pickle.loads(pickle.dumps(monitor))
    assert (copy.threshold, copy.cleanup_enabled, copy.hysteresis) == (0.9, True, 0.1)
    assert copy.root == monitor.root
    assert copy.read().limit == 1024**3
    assert not copy.running


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_runs_its_own_monitor(instrumentor: MemoryInstrumentor,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """After fork the child has a live check thread, its own lock, and no root-only tree metrics."""
    monitor = instrumentor.monitor
    assert monitor is not None and monitor.running
    monkeypatch.setenv(ROOT_MARKER, str(os.getpid()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork() of a multi-threaded process
        pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            ok = monitor.running and monitor.check() is False and monitor.process_tree_peak == 0
            reading = monitor.read()
            code = 0 if ok and reading.process_tree_usage is None and reading.limit == LIMIT else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert monitor.running


def test_check_thread_never_delays_exit(tmp_path: Path) -> None:
    """A program whose monitor checks every hour still exits at once when its main thread ends."""
    script = tmp_path / "app.py"
    script.write_text(textwrap.dedent("""
        from otel_perf import MemoryMonitor
        MemoryMonitor().start(3600)
        print("started")
    """))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "started", result.stderr


@pytest.mark.parametrize(
    "kwargs",
    [{"limit": 0}, {"limit": "lots"}, {"limit": -5}, {"threshold": 1.5}, {"threshold": 0}, {"threshold": "x"},
     {"hysteresis": 0.9}],
)
def test_invalid_arguments_raise_config_error(kwargs: dict[str, Any]) -> None:
    """A bad argument is the caller's to fix: ConfigError naming the variable."""
    with pytest.raises(ConfigError, match="Expected"):
        MemoryMonitor(settings=load_settings({}), **kwargs)


def test_start_rejects_a_non_positive_interval() -> None:
    with pytest.raises(ConfigError, match="OTEL_PERF_MEMORY_CHECK_INTERVAL"):
        MemoryMonitor(settings=load_settings({})).start(0)


def test_process_tree_rss_is_at_least_own_rss() -> None:
    import psutil

    assert process_tree_rss() >= psutil.Process().memory_info().rss // 2


def test_configure_starts_the_monitor_and_shutdown_stops_it(otel_globals: None, metric_reader: Any) -> None:
    """otel_perf.configure() runs the memory instrumentor (entry point otel_perf_memory) with its settings."""
    from opentelemetry.sdk.metrics import MeterProvider

    import otel_perf

    provider = MeterProvider(metric_readers=[metric_reader])
    handle = otel_perf.configure("svc", meter_provider=provider, memory_threshold=0.9,
                                 memory_limit="64GiB", memory_check_interval=3600)
    try:
        monitor = MemoryInstrumentor().monitor
        assert monitor is not None and monitor.running and monitor.threshold == 0.9
        [limit] = metric_points(metric_reader, "otel_perf.memory.limit")
        assert (limit.value, limit.attributes["otel_perf.memory.limit.source"]) == (64 * 1024**3, "config")
    finally:
        handle.shutdown()
        provider.shutdown()
    assert MemoryInstrumentor().monitor is None
    assert not [t for t in threading.enumerate() if t.name == "otel-perf-memory"]


def test_check_takes_up_a_changed_cgroup_limit_within_the_cache_age(cgroup: FakeCgroup, clock: FakeClock) -> None:
    """A cgroup limit lowered while the program runs (an in-place resize) decides the checks at most
    ``_LIMIT_MAX_AGE`` seconds later; ``read()`` (and so every collection) sees it at once."""
    from otel_perf.instrumentations.memory import _LIMIT_MAX_AGE

    monitor = make_monitor(cgroup, clock=clock)
    cgroup.set_pressure(0.5)
    assert monitor.check() is False
    (cgroup.root / LEAF / "memory.max").write_text(f"{LIMIT // 4}\n")
    clock.advance(_LIMIT_MAX_AGE / 2)
    assert monitor.check() is False  # the limit found by the first check, still fresh
    clock.advance(_LIMIT_MAX_AGE / 2)
    assert monitor.check() is True
    assert monitor.read().limit == LIMIT // 4


def test_check_reads_the_cgroup_usage_afresh_each_time(cgroup: FakeCgroup, clock: FakeClock) -> None:
    """The usage a check weighs is read at every check, even while the clock stands still (only the
    limit and the slow-moving parts are cached)."""
    monitor = make_monitor(cgroup, clock=clock)
    cgroup.set_pressure(0.5)
    assert monitor.check() is False
    cgroup.set_pressure(0.85)
    assert monitor.check() is True
    cgroup.set_pressure(0.7)
    assert monitor.check() is False


def test_check_counts_a_new_childs_memory_within_the_cache_age(tmp_path: Path, clock: FakeClock) -> None:
    """With a configured limit, a check weighs this process's RSS (read each time) plus its descendants'
    (read again after ``_SLOW_USAGE_MAX_AGE``): a child holding 192 MiB tips the pressure over."""
    from otel_perf.instrumentations.memory import _SLOW_USAGE_MAX_AGE

    before = process_tree_rss()
    monitor = MemoryMonitor(limit=before + 128 * 1024 * 1024, threshold=0.9, settings=load_settings({}),
                            root=str(FIXTURES / "empty"), clock=clock)
    assert monitor.check() is False
    ready = tmp_path / "ready"
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time, pathlib
        hold = bytearray(b"x") * (192 * 1024 * 1024)
        pathlib.Path({str(ready)!r}).write_text("1")
        time.sleep(30)
    """)])
    try:
        for _ in range(400):
            if ready.exists():
                break
            time.sleep(0.05)
        clock.advance(_SLOW_USAGE_MAX_AGE)
        assert monitor.check() is True
    finally:
        child.kill()
        child.wait(10)
    clock.advance(_SLOW_USAGE_MAX_AGE)
    assert monitor.check() is False
