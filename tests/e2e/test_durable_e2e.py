"""Durable export end to end: real programs, a real OTLP receiver that goes down and comes back, SIGKILL.

The program under test (written to ``tmp_path``) works in phases the test releases one at a time through
files in a control directory: each phase ends 10 spans and 10 log records and adds 1 to a counter,
flushes the SDK's processors (so the batches are handed to the exporter) and says it is done. The test
stops and starts the receiver on fixed ports between phases, kills the program, and runs it again.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from otel_perf.testing import OTLPReceiver
from tests.conftest import BIN, clean_env

pytestmark = pytest.mark.e2e

PER_PHASE = 10

APP = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from otel_perf.exporters.durable import DurableLogExporter, DurableMetricExporter, DurableSpanExporter

    control, run = Path(sys.argv[1]), sys.argv[2]
    fast = dict(min_backoff=0.05, max_backoff=0.3, poll_interval=0.2)
    resource = Resource.create({"service.name": "durable-e2e", "run": run})
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(BatchSpanProcessor(DurableSpanExporter(**fast), schedule_delay_millis=100))
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(
        BatchLogRecordProcessor(DurableLogExporter(**fast), schedule_delay_millis=100))
    meter_provider = MeterProvider(resource=resource, metric_readers=[
        PeriodicExportingMetricReader(DurableMetricExporter(**fast), export_interval_millis=300)])
    tracer = tracer_provider.get_tracer("app")
    logger = logger_provider.get_logger("app")
    phases = meter_provider.get_meter("app").create_counter("app.phases")
    phase = 0
    while True:
        go = control / f"go-{phase}"
        deadline = time.monotonic() + 120
        while not go.exists():
            if time.monotonic() > deadline:
                sys.exit(3)
            time.sleep(0.02)
        command = go.read_text().strip()
        if command == "exit":
            break
        for i in range(%(per_phase)d):
            with tracer.start_as_current_span(f"{run}-{phase}-{i}"):
                logger.emit(body=f"{run}-{phase}-{i}")
        phases.add(1)
        tracer_provider.force_flush()
        logger_provider.force_flush()
        meter_provider.force_flush(500)
        (control / f"done-{phase}").write_text("")
        if command == "hang":
            time.sleep(600)
        phase += 1
    tracer_provider.shutdown()
    logger_provider.shutdown()
    meter_provider.shutdown()
""") % {"per_phase": PER_PHASE}


class _Backend:
    """The OTLP receiver on fixed ports, stopped and started at will; keeps what every instance received."""

    def __init__(self) -> None:
        probe = OTLPReceiver().start()
        self.grpc_port, self.http_port = probe.grpc_port, probe.http_port
        probe.stop()
        self.receiver: OTLPReceiver | None = None
        self.received: list[OTLPReceiver] = []

    def up(self) -> OTLPReceiver:
        assert self.receiver is None
        deadline = time.monotonic() + 10
        while True:
            try:
                self.receiver = OTLPReceiver(grpc_port=self.grpc_port, http_port=self.http_port).start()
                break
            except (OSError, RuntimeError):  # the port is still held by the instance just stopped
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self.received.append(self.receiver)
        return self.receiver

    def down(self) -> None:
        if self.receiver is not None:
            self.receiver.stop()
            self.receiver = None

    def env(self, protocol: str) -> dict[str, str]:
        endpoint = (f"http://127.0.0.1:{self.grpc_port}" if protocol == "grpc"
                    else f"http://127.0.0.1:{self.http_port}")
        return {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
                "OTEL_EXPORTER_OTLP_INSECURE": "true", "OTEL_EXPORTER_OTLP_TIMEOUT": "5"}

    def spans(self) -> list[Any]:
        return [s for r in self.received for s in r.spans()]

    def logs(self) -> list[Any]:
        return [rec for r in self.received for rec in r.logs()]

    def points(self, name: str) -> list[Any]:
        return [p for r in self.received for p in r.metric_points(name)]


@pytest.fixture
def backend() -> Iterator[_Backend]:
    made = _Backend()
    yield made
    made.down()


class _Program:
    """One run of the phased app."""

    def __init__(self, tmp_path: Path, run: str, env: dict[str, str]) -> None:
        self.control = tmp_path / f"control-{run}"
        self.control.mkdir()
        app = tmp_path / "app.py"
        app.write_text(APP)
        self.process = subprocess.Popen([sys.executable, str(app), str(self.control), run], env=env)
        self.phase = 0

    def step(self, command: str = "work") -> None:
        (self.control / f"go-{self.phase}").write_text(command)
        done = self.control / f"done-{self.phase}"
        deadline = time.monotonic() + 60
        while not done.exists():
            assert self.process.poll() is None, f"the program ended early ({self.process.returncode})"
            assert time.monotonic() < deadline, f"phase {self.phase} did not finish"
            time.sleep(0.02)
        self.phase += 1

    def exit(self) -> int:
        (self.control / f"go-{self.phase}").write_text("exit")
        return self.process.wait(timeout=60)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)


def _expected(run: str, phases: range) -> list[str]:
    return [f"{run}-{p}-{i}" for p in phases for i in range(PER_PHASE)]


def _assert_delivered(received: list[str], expected: list[str], outages: int) -> None:
    """Everything expected arrived, in order (first arrivals), with duplicates within the bound."""
    firsts = list(dict.fromkeys(n for n in received if n in set(expected)))
    assert firsts == expected
    duplicates = len([n for n in received if n in set(expected)]) - len(expected)
    assert duplicates <= outages * PER_PHASE, f"{duplicates} duplicates"


def _assert_counter_in_order(backend: _Backend, run: str, final: int) -> None:
    """The run's counter points arrived in time order and reached the value of its last phase."""
    points = [p for p in backend.points("app.phases") if p.resource.get("run") == run]
    times = [p.time for p in points]
    assert times == sorted(times)
    assert points and points[-1].value == final


def _env(tmp_path: Path, backend: _Backend, protocol: str) -> dict[str, str]:
    return clean_env(**backend.env(protocol), OTEL_PERF_SPOOL_DIR=str(tmp_path / "spool"))


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_backend_down_at_start_then_up_then_down_again_loses_nothing(
        tmp_path: Path, backend: _Backend, protocol: str) -> None:
    """Down at start, up, down mid-run, program exits while down: after a restart everything arrived."""
    program = _Program(tmp_path, "run1", _env(tmp_path, backend, protocol))
    program.step()                        # phase 0: backend down at start
    assert list((tmp_path / "spool" / "traces").glob("*.otlp"))
    receiver = backend.up()
    program.step()                        # phase 1: backend up
    receiver.wait_for(lambda r: len(backend.spans()) >= 2 * PER_PHASE, timeout=30)
    backend.down()
    program.step()                        # phase 2: down again mid-run
    assert program.exit() == 0            # graceful exit while down: bounded, the spool keeps the data
    backend.up()
    rerun = _Program(tmp_path, "run2", _env(tmp_path, backend, protocol))
    rerun.step()
    assert rerun.exit() == 0
    expected_spans = _expected("run1", range(3)) + _expected("run2", range(1))
    _assert_delivered([s.name for s in backend.spans()], expected_spans, outages=2)
    _assert_delivered([str(r.body) for r in backend.logs()], expected_spans, outages=2)
    _assert_counter_in_order(backend, "run1", 3)
    _assert_counter_in_order(backend, "run2", 1)
    assert not list((tmp_path / "spool").rglob("*.otlp"))


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_data_spooled_before_a_sigkill_arrives_after_a_restart(
        tmp_path: Path, backend: _Backend, protocol: str) -> None:
    """Killed with SIGKILL while its batches wait in the spool; the restarted program delivers them."""
    receiver = backend.up()
    program = _Program(tmp_path, "run1", _env(tmp_path, backend, protocol))
    program.step()                        # phase 0 delivered
    receiver.wait_for(lambda r: len(backend.spans()) >= PER_PHASE, timeout=30)
    backend.down()
    program.step()                        # phase 1 spooled
    program.step("hang")                  # phase 2 spooled, then the program hangs
    assert len(list((tmp_path / "spool" / "traces").glob("*.otlp"))) >= 1
    program.kill()
    backend.up()
    rerun = _Program(tmp_path, "run2", _env(tmp_path, backend, protocol))
    rerun.step()
    assert rerun.exit() == 0
    expected = _expected("run1", range(3)) + _expected("run2", range(1))
    _assert_delivered([s.name for s in backend.spans()], expected, outages=1)
    _assert_delivered([str(r.body) for r in backend.logs()], expected, outages=1)
    _assert_counter_in_order(backend, "run1", 3)
    assert not list((tmp_path / "spool").rglob("*.otlp"))


def test_processes_sharing_a_spool_send_each_entry_exactly_once(
        tmp_path: Path, backend: _Backend) -> None:
    """Three processes replay one spool at once: every span arrives once, in the spool's order."""
    spool = tmp_path / "spool"
    env = _env(tmp_path, backend, "grpc")
    writer = textwrap.dedent(f"""
        from opentelemetry.sdk.trace import TracerProvider
        from otel_perf.exporters.durable import DurableSpanExporter
        exporter = DurableSpanExporter(spool_dir={str(spool)!r}, timeout=0.2, min_backoff=60, max_backoff=60)
        tracer = TracerProvider().get_tracer("w")
        for b in range(40):
            spans = []
            for i in range(2):
                span = tracer.start_span(f"b{{b:02d}}-{{i}}")
                span.end()
                spans.append(span)
            exporter.export(spans)
        exporter.shutdown()
    """)
    subprocess.run([sys.executable, "-c", writer], env=env, timeout=60, check=True)
    assert len(list((spool / "traces").glob("*.otlp"))) == 40
    backend.up()
    replayer = textwrap.dedent(f"""
        import time
        from otel_perf.exporters.durable import DurableSpanExporter
        exporter = DurableSpanExporter(spool_dir={str(spool)!r}, min_backoff=0.05, max_backoff=0.2,
                                       poll_interval=0.05)
        deadline = time.monotonic() + 30
        while exporter.spool.entries() and time.monotonic() < deadline:
            time.sleep(0.02)
        exporter.shutdown()
    """)
    replayers = [subprocess.Popen([sys.executable, "-c", replayer], env=env) for _ in range(3)]
    for process in replayers:
        assert process.wait(timeout=60) == 0
    names = [s.name for s in backend.spans()]
    assert names == [f"b{b:02d}-{i}" for b in range(40) for i in range(2)]


def test_the_launcher_picks_durable_export_from_the_spool_directory(
        tmp_path: Path, backend: _Backend) -> None:
    """opentelemetry-instrument with OTEL_PERF_SPOOL_DIR: spans made while the backend was down arrive."""
    marker = tmp_path / "emitted"
    go = tmp_path / "go"
    app = tmp_path / "launched.py"
    app.write_text(textwrap.dedent(f"""
        import time
        from pathlib import Path
        from opentelemetry import _logs, metrics, trace
        tracer = trace.get_tracer("launched")
        counter = metrics.get_meter("launched").create_counter("launched.items")
        for i in range(5):
            with tracer.start_as_current_span(f"launched-{{i}}"):
                _logs.get_logger("launched").emit(body=f"launched-{{i}}")
                counter.add(1)
        trace.get_tracer_provider().force_flush()
        _logs.get_logger_provider().force_flush()
        metrics.get_meter_provider().force_flush(500)
        Path({str(marker)!r}).write_text("")
        deadline = time.monotonic() + 60
        while not Path({str(go)!r}).exists() and time.monotonic() < deadline:
            time.sleep(0.02)
    """))
    env = clean_env(**backend.env("grpc"), OTEL_PERF_SPOOL_DIR=str(tmp_path / "spool"),
                    OTEL_PYTHON_DISTRO="otel_perf",
                    OTEL_SERVICE_NAME="launched", OTEL_METRIC_EXPORT_INTERVAL="60000")
    env["OTEL_EXPORTER_OTLP_TIMEOUT"] = "5"
    process = subprocess.Popen([str(BIN / "opentelemetry-instrument"), sys.executable, str(app)], env=env)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        for signal_dir in ("traces", "metrics", "logs"):  # spooled: nobody is listening
            assert list((tmp_path / "spool" / signal_dir).glob("*.otlp")), signal_dir
        backend.up()
        go.write_text("")
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
    assert [s.name for s in backend.spans()] == [f"launched-{i}" for i in range(5)]
    assert [str(r.body) for r in backend.logs()] == [f"launched-{i}" for i in range(5)]
    assert backend.points("launched.items")[-1].value == 5
    assert not list((tmp_path / "spool").rglob("*.otlp"))


# A short program as users write them, under either way in: its own span, a parse (a span for every parse:
# OTEL_PERF_PARSE_SPAN_MIN_DURATION=0), a log record and a counter; it flushes, says which otel-perf
# instrumentors are on and whether the debug server runs, then (with a go file) waits to be released.
SHORT_APP = textwrap.dedent("""
    import json, os, sys, time
    from importlib.metadata import entry_points
    from pathlib import Path
    if sys.argv[1] == "configure":
        import otel_perf
        otel_perf.configure()
    from opentelemetry import _logs, metrics, trace
    with trace.get_tracer("app").start_as_current_span("work"):
        json.loads('{"a": 1}')
        _logs.get_logger("app").emit(body="log-work")
        metrics.get_meter("app").create_counter("app.items").add(3)
    on = sorted(ep.name for ep in entry_points(group="opentelemetry_instrumentor")
                if ep.name.startswith("otel_perf_") and ep.load()().is_instrumented_by_opentelemetry)
    from otel_perf.profiling import server
    print("instrumented=" + ",".join(on))
    print("debug-server=%s" % (server._startup_server is not None))
    trace.get_tracer_provider().force_flush()
    _logs.get_logger_provider().force_flush()
    metrics.get_meter_provider().force_flush(1000)
    if len(sys.argv) > 2:
        Path(sys.argv[2] + ".flushed").write_text("")
        deadline = time.monotonic() + 60
        while not Path(sys.argv[2]).exists() and time.monotonic() < deadline:
            time.sleep(0.02)
""")

ALL_INSTRUMENTORS = "otel_perf_memory,otel_perf_parsers,otel_perf_runtime,otel_perf_subprocess,otel_perf_tools," \
                    "otel_perf_workers"


def _short_app_command(tmp_path: Path, way_in: str, *extra: str) -> list[str]:
    app = tmp_path / "short_app.py"
    app.write_text(SHORT_APP)
    if way_in == "launcher":
        return [str(BIN / "opentelemetry-instrument"), sys.executable, str(app), way_in, *extra]
    return [sys.executable, str(app), way_in, *extra]


def _short_app_env(backend: _Backend, **extra: str) -> dict[str, str]:
    return clean_env(**backend.env("grpc"), OTEL_PYTHON_DISTRO="otel_perf",
                     OTEL_PERF_PARSE_SPAN_MIN_DURATION="0", OTEL_METRIC_EXPORT_INTERVAL="60000", **extra)


@pytest.mark.parametrize("way_in", ["launcher", "configure"])
def test_an_unusable_spool_directory_means_plain_otlp_and_one_warning(
        tmp_path: Path, backend: _Backend, way_in: str) -> None:
    """OTEL_PERF_SPOOL_DIR under a regular file: one warning naming the variable and why, no traceback;
    the signals go over plain OTLP, every instrumentation is on and the debug server runs."""
    (tmp_path / "a-file").write_text("")
    spool = tmp_path / "a-file" / "spool"
    receiver = backend.up()
    env = _short_app_env(backend, OTEL_PERF_SPOOL_DIR=str(spool), OTEL_PERF_DEBUG_ADDR="127.0.0.1:0")
    out = subprocess.run(_short_app_command(tmp_path, way_in), env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    warnings = [line for line in out.stderr.splitlines() if "OTEL_PERF_SPOOL_DIR" in line]
    assert len(warnings) == 1, out.stderr
    assert str(spool) in warnings[0] and "Not a directory" in warnings[0] and "plain OTLP" in warnings[0]
    assert "Traceback" not in out.stderr
    assert f"instrumented={ALL_INSTRUMENTORS}" in out.stdout
    assert "debug-server=True" in out.stdout
    receiver.wait_for(lambda r: {"work", "parse json"} <= {s.name for s in r.spans()} and r.logs()
                      and r.metric_points("app.items"), timeout=30)


@pytest.mark.parametrize("way_in", ["launcher", "configure"])
def test_an_explicit_otlp_exporter_spools_when_a_spool_directory_is_set(
        tmp_path: Path, backend: _Backend, way_in: str) -> None:
    """OTEL_{TRACES,METRICS,LOGS}_EXPORTER=otlp, as the Operator sets, with OTEL_PERF_SPOOL_DIR: what the
    program flushed while the backend was down survives a SIGKILL and arrives after a restart."""
    spool = tmp_path / "spool"
    env = _short_app_env(backend, OTEL_PERF_SPOOL_DIR=str(spool), OTEL_TRACES_EXPORTER="otlp",
                         OTEL_METRICS_EXPORTER="otlp", OTEL_LOGS_EXPORTER="otlp")
    go = tmp_path / "go"
    program = subprocess.Popen(_short_app_command(tmp_path, way_in, str(go)), env=env, stdout=subprocess.PIPE,
                               text=True)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "go.flushed").exists():
            assert program.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        for signal_dir in ("traces", "metrics", "logs"):  # nobody listens: all of it is in the spool
            assert list((spool / signal_dir).glob("*.otlp")), signal_dir
        program.send_signal(signal.SIGKILL)
        program.wait(timeout=30)
    finally:
        if program.poll() is None:
            program.kill()
            program.wait(timeout=30)
        assert program.stdout is not None
        program.stdout.close()
    receiver = backend.up()
    replay = textwrap.dedent(f"""
        import time
        from pathlib import Path
        deadline = time.monotonic() + 30
        while list(Path({str(spool)!r}).rglob("*.otlp")) and time.monotonic() < deadline:
            time.sleep(0.05)
    """)
    command = [str(BIN / "opentelemetry-instrument"), sys.executable, "-c", replay]
    if way_in == "configure":
        command = [sys.executable, "-c", "import otel_perf; otel_perf.configure()\n" + replay]
    subprocess.run(command, env=env, timeout=120, check=True)
    assert {"work", "parse json"} <= {s.name for s in receiver.spans()}
    assert "log-work" in [str(r.body) for r in receiver.logs()]
    assert [p.value for p in receiver.metric_points("app.items")] == [3]
    assert not list(spool.rglob("*.otlp"))
