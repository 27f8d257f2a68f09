"""The launcher way in, end to end: opentelemetry-instrument and otel-perf run as real subprocesses."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from otel_perf import _otlpjson
from otel_perf.exporters.files import iter_requests
from otel_perf.testing import OTLPReceiver
from tests.conftest import BIN, clean_env

pytestmark = pytest.mark.e2e

APP = textwrap.dedent("""
    import os, sys
    from opentelemetry import metrics, trace
    tracer = trace.get_tracer("app")
    with tracer.start_as_current_span("parent"):
        metrics.get_meter("app").create_counter("app.requests", unit="{request}").add(3)
    print("root-marker=" + os.environ.get("OTEL_PERF_ROOT_PID", ""))
""")

# otel-perf registers a distro but no configurator (the one installed, or otel-perf's pre-instrument hook,
# sets the SDK up): selecting the distro is all `otel-perf run` does, and it changes no default.
SELECTORS = {"OTEL_PYTHON_DISTRO": "otel_perf"}


def _run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    completed = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    return completed


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_launcher_delivers_spans_and_metrics_over_otlp(
    protocol: str, otlp_receiver: OTLPReceiver, tmp_path: Path
) -> None:
    """opentelemetry-instrument python app.py sends spans and metrics to a real OTLP receiver."""
    (tmp_path / "app.py").write_text(APP)
    env = clean_env(**otlp_receiver.env(protocol), **SELECTORS, OTEL_SERVICE_NAME="e2e-app")
    _run([str(BIN / "opentelemetry-instrument"), "python", "app.py"], env, tmp_path)
    transport = "grpc" if protocol == "grpc" else "http"
    spans = otlp_receiver.spans(transport)
    assert [s.name for s in spans] == ["parent"]
    assert spans[0].resource["service.name"] == "e2e-app"
    (point,) = otlp_receiver.latest_points("app.requests")
    assert (point.value, point.unit) == (3, "{request}")


def test_otel_perf_run_without_endpoint_writes_json_lines(tmp_path: Path) -> None:
    """otel-perf run with no endpoint writes OTLP JSON lines files, one per process and signal."""
    (tmp_path / "app.py").write_text(APP)
    out = _run([str(BIN / "otel-perf"), "run", "--", "python", "app.py"], clean_env(), tmp_path)
    assert "writing OTLP JSON lines under" in out.stderr
    data = tmp_path / "otel-perf-data"
    spans = [s for _, r in iter_requests(data) for s in _otlpjson.spans(r)]
    points = [p for _, r in iter_requests(data) for p in _otlpjson.metric_points(r) if p.name == "app.requests"]
    assert [s.name for s in spans] == ["parent"]
    assert len(spans[0].trace_id) == 32 and len(spans[0].span_id) == 16  # hex ids, OTLP/JSON style
    assert points and points[-1].value == 3
    assert {f.name.split("-")[0] for f in data.iterdir()} == {"traces", "metrics"}


def _launcher_instruments_children() -> bool:
    """opentelemetry-instrumentation 0.63b0 and later keep their sitecustomize on PYTHONPATH for child
    Pythons; earlier releases remove it, so a launched program's children run uninstrumented."""
    from importlib.metadata import version

    minor = int(version("opentelemetry-instrumentation").split(".")[1].split("b")[0])
    return minor >= 63


@pytest.mark.skipif(not _launcher_instruments_children(),
                    reason="this opentelemetry-instrumentation does not instrument child Pythons (before 0.63b0)")
def test_child_program_continues_parent_trace(otlp_receiver: OTLPReceiver, tmp_path: Path) -> None:
    """A child Python program started by an instrumented parent (TRACEPARENT in its environment)
    continues the parent's trace, and knows it is not the root of the process tree."""
    (tmp_path / "child.py").write_text(textwrap.dedent("""
        import os
        from opentelemetry import trace
        with trace.get_tracer("child").start_as_current_span("child-work"):
            pass
        print("child-root=" + os.environ.get("OTEL_PERF_ROOT_PID", ""))
    """))
    (tmp_path / "parent.py").write_text(textwrap.dedent("""
        import os, subprocess, sys
        from opentelemetry import propagate, trace
        with trace.get_tracer("parent").start_as_current_span("parent-work"):
            env = dict(os.environ)
            carrier = {}
            propagate.inject(carrier)
            env["TRACEPARENT"] = carrier["traceparent"]
            out = subprocess.run([sys.executable, "child.py"], env=env, capture_output=True, text=True)
            print(out.stdout, end="")
        print("parent-pid=%d" % os.getpid())
    """))
    # The hand-over alone, without otel_perf_subprocess's CLIENT span (tests/e2e/test_tools_e2e.py has that).
    env = clean_env(**otlp_receiver.env("grpc"), **SELECTORS,
                    OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="otel_perf_subprocess")
    out = _run([str(BIN / "opentelemetry-instrument"), "python", "parent.py"], env, tmp_path)
    spans = {s.name: s for s in otlp_receiver.wait_for(lambda r: len(r.spans()) >= 2 and r.spans())}
    assert spans["child-work"].trace_id == spans["parent-work"].trace_id
    assert spans["child-work"].parent_span_id == spans["parent-work"].span_id
    parent_pid = out.stdout.split("parent-pid=")[1].strip()
    assert f"child-root={parent_pid}" in out.stdout  # the child inherited the root marker


STOCK_APP = textwrap.dedent("""
    import json, logging, os, sys, urllib.request
    from opentelemetry import metrics, trace
    with trace.get_tracer("app").start_as_current_span("parent"):
        metrics.get_meter("app").create_counter("app.requests", unit="{request}").add(3)
        json.loads('{"a": 1}')
        logging.getLogger("app").warning("hello from the app")
    print("root-marker=" + os.environ.get("OTEL_PERF_ROOT_PID", ""))
    with urllib.request.urlopen("http://%s/debug/pprof/cmdline" % os.environ["OTEL_PERF_DEBUG_ADDR"]) as reply:
        print("debug-server=%d" % reply.status)
""")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def default_endpoint_receiver() -> Iterator[OTLPReceiver]:
    """The real receiver on the OTLP default endpoint (gRPC, localhost:4317): where a stock set-up sends."""
    receiver = OTLPReceiver(grpc_port=4317)
    try:
        receiver.start()
    except Exception as exc:  # the port is taken on this machine
        receiver.stop()
        message = f"cannot listen on the OTLP default port 127.0.0.1:4317: {exc}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield receiver
    finally:
        receiver.stop()


@pytest.mark.parametrize("distro", [None, "distro", "otel_perf"],
                         ids=["no-selectors", "stock-distro", "otel-perf-distro"])
def test_launcher_beside_opentelemetry_distro_exports_what_the_stock_setup_exports(
    distro: str | None, default_endpoint_receiver: OTLPReceiver, tmp_path: Path
) -> None:
    """With opentelemetry-distro installed too and no exporter settings, whichever distro the launcher
    loads, the program sends OTLP (gRPC) to the default endpoint for all three signals and writes no file;
    otel-perf's instrumentations and services run (parse metric, root marker, parent's trace, debug server),
    and a child Python's stderr stays empty (the launcher has one configurator to load, so no warning)."""
    from importlib.metadata import entry_points

    assert "distro" in {ep.name for ep in entry_points(group="opentelemetry_distro")}, \
        "opentelemetry-distro must be installed for this test (test extra)"
    (tmp_path / "app.py").write_text(STOCK_APP + textwrap.dedent("""
        import subprocess
        child = subprocess.run([sys.executable, "-c", "pass"], capture_output=True)
        print("child-stderr=%r" % child.stderr)
    """))
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    env = clean_env(OTEL_PYTHON_LOGGING_AUTO_INSTRUMENTATION_ENABLED="true", OTEL_BSP_SCHEDULE_DELAY="100",
                    OTEL_BLRP_SCHEDULE_DELAY="100", OTEL_METRIC_EXPORT_INTERVAL="200",
                    OTEL_PERF_DEBUG_ADDR=f"127.0.0.1:{_free_port()}",
                    TRACEPARENT=f"00-{trace_id}-{parent_id}-01")
    if distro is not None:
        env["OTEL_PYTHON_DISTRO"] = distro
    out = _run([str(BIN / "opentelemetry-instrument"), "python", "app.py"], env, tmp_path)
    assert "child-stderr=b''" in out.stdout
    assert out.stdout.split("root-marker=")[1].split()[0].isdigit()
    assert "debug-server=200" in out.stdout
    receiver = default_endpoint_receiver
    (span,) = receiver.wait_for(lambda r: [s for s in r.spans("grpc") if s.name == "parent"])
    assert (span.trace_id, span.parent_span_id) == (trace_id, parent_id)  # the parent's TRACEPARENT
    receiver.wait_for(lambda r: r.latest_points("app.requests"))
    receiver.wait_for(lambda r: r.latest_points("otel_perf.parse.duration"))
    assert any(log.body == "hello from the app" for log in receiver.wait_for(lambda r: r.logs("grpc")))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.py"]  # no otel-perf-data, no file at all


def test_otel_perf_run_child_pythons_print_nothing(tmp_path: Path) -> None:
    """Under otel-perf run, a child Python's captured stderr is empty: the launcher loads the one
    configurator installed (or none) and has nothing to warn about."""
    (tmp_path / "app.py").write_text(textwrap.dedent("""
        import subprocess, sys
        child = subprocess.run([sys.executable, "-c", "pass"], capture_output=True)
        print("child-stderr=%r" % child.stderr)
    """))
    for legacy in ({}, {"OTEL_PYTHON_CONFIGURATOR": "otel_perf"}):  # the name older docs told users to set
        out = _run([str(BIN / "otel-perf"), "run", "-q", "--", "python", "app.py"],
                   clean_env(OTEL_PERF_OUTPUT_DIR=str(tmp_path / "out"), **legacy), tmp_path)
        assert "child-stderr=b''" in out.stdout, legacy


def test_sdk_is_set_up_when_no_configurator_is_loaded(tmp_path: Path) -> None:
    """When the launcher loads no configurator (here: OTEL_PYTHON_CONFIGURATOR names one that is not
    installed, as the otel_perf name of older releases), otel-perf's pre-instrument hook sets the SDK up
    from the environment, and its start-up still runs."""
    (tmp_path / "app.py").write_text(APP)
    env = clean_env(OTEL_PYTHON_CONFIGURATOR="otel_perf", OTEL_TRACES_EXPORTER="otel_perf_file",
                    OTEL_METRICS_EXPORTER="none", OTEL_LOGS_EXPORTER="none",
                    OTEL_PERF_OUTPUT_DIR=str(tmp_path / "out"))
    out = _run([str(BIN / "opentelemetry-instrument"), "python", "app.py"], env, tmp_path)
    assert out.stdout.split("root-marker=")[1].strip()
    assert [s.name for _, r in iter_requests(tmp_path / "out") for s in _otlpjson.spans(r)] == ["parent"]


def test_broken_sdk_setup_does_not_abort_auto_instrumentation(tmp_path: Path) -> None:
    """A bad exporter name makes the SDK set-up fail; otel-perf logs it and the launcher still instruments
    the program (here: contrib's threading instrumentation is applied), and the program runs."""
    (tmp_path / "app.py").write_text(textwrap.dedent("""
        from opentelemetry.instrumentation.threading import ThreadingInstrumentor
        print("threading-instrumented=%s" % ThreadingInstrumentor().is_instrumented_by_opentelemetry)
    """))
    # No configurator loaded (a name that is not installed): otel-perf's hook sets the SDK up, guarded.
    # (The stock configurator raises for a bad exporter name, and the launcher then instruments nothing.)
    env = clean_env(**SELECTORS, OTEL_PYTHON_CONFIGURATOR="otel_perf", OTEL_TRACES_EXPORTER="no_such_exporter",
                    OTEL_PERF_MEMORY_THRESHOLD="abc")
    out = _run([str(BIN / "opentelemetry-instrument"), "python", "app.py"], env, tmp_path)
    assert "threading-instrumented=True" in out.stdout
    assert "could not be set up" in out.stderr
    assert "OTEL_PERF_MEMORY_THRESHOLD" in out.stderr and "'abc'" in out.stderr


# --- otel-perf run: one process, the program's own signals and exit status -------------------------------

SIGNALLED_APP = textwrap.dedent("""
    import os, signal, subprocess, sys, time
    from pathlib import Path
    def on_signal(signum, frame):
        Path("got").write_text(signal.Signals(signum).name)
        sys.exit(40 + signum)
    if sys.argv[1:] != ["default"]:
        for which in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(which, on_signal)
    Path("pid").write_text(str(os.getpid()))
    time.sleep(60)
    sys.exit(3)
""")


def _start_signalled(tmp_path: Path, *args: str) -> subprocess.Popen[bytes]:
    (tmp_path / "app.py").write_text(SIGNALLED_APP)
    process = subprocess.Popen([str(BIN / "otel-perf"), "run", "-q", "--", "python", "app.py", *args],
                               env=clean_env(), cwd=tmp_path)
    deadline = time.monotonic() + 60
    while not (tmp_path / "pid").exists() or not (tmp_path / "pid").read_text():
        assert process.poll() is None and time.monotonic() < deadline, "the program did not start"
        time.sleep(0.02)
    return process


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_otel_perf_run_becomes_the_program_so_signals_reach_it(tmp_path: Path, signum: int) -> None:
    """otel-perf run replaces itself with the program (set up as the launcher would): the pid a
    supervisor holds is the program's, a signal sent to it reaches the program's handler, and the exit
    status is the program's own."""
    process = _start_signalled(tmp_path)
    try:
        assert int((tmp_path / "pid").read_text()) == process.pid  # no waiting parent process in between
        process.send_signal(signum)
        assert process.wait(timeout=60) == 40 + signum
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
    assert (tmp_path / "got").read_text() == signal.Signals(signum).name


def test_otel_perf_run_ends_with_the_signal_that_ended_the_program(tmp_path: Path) -> None:
    """A program without handlers is ended by SIGTERM sent to otel-perf run, whoever waits sees exactly
    that, and no program is left running orphaned."""
    process = _start_signalled(tmp_path, "default")
    program = int((tmp_path / "pid").read_text())
    try:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == -signal.SIGTERM
        with pytest.raises(ProcessLookupError):
            os.kill(program, 0)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):
            os.kill(program, signal.SIGKILL)


def test_otel_perf_run_names_a_missing_or_unusable_program(tmp_path: Path) -> None:
    """No such program: 127; a file that is not executable: 126; one line each, no traceback."""
    missing = subprocess.run([str(BIN / "otel-perf"), "run", "--", "no-such-program-xyz"], env=clean_env(),
                             cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 127
    assert missing.stderr.strip().splitlines()[-1] == "otel-perf run: no-such-program-xyz: command not found"
    (tmp_path / "script.sh").write_text("#!/bin/sh\necho hi\n")
    unusable = subprocess.run([str(BIN / "otel-perf"), "run", "--", "./script.sh"], env=clean_env(),
                              cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert unusable.returncode == 126
    assert "./script.sh: permission denied" in unusable.stderr and "Traceback" not in unusable.stderr


def test_a_malformed_value_is_reported_once_under_otel_perf_run(tmp_path: Path) -> None:
    """One warning for one bad value: not again by the otel-perf run process, nor by the program's child
    Pythons, which read the same environment."""
    (tmp_path / "app.py").write_text(textwrap.dedent("""
        import subprocess, sys
        for _ in range(2):
            subprocess.run([sys.executable, "-c", "pass"], check=True)
    """))
    out = _run([str(BIN / "otel-perf"), "run", "-q", "--", "python", "app.py"],
               clean_env(OTEL_PERF_MEMORY_THRESHOLD="abc", OTEL_PERF_OUTPUT_DIR=str(tmp_path / "out")), tmp_path)
    warnings = [line for line in out.stderr.splitlines() if "OTEL_PERF_MEMORY_THRESHOLD" in line]
    assert len(warnings) == 1, out.stderr
    assert "'abc'" in warnings[0] and "using 0.8 instead" in warnings[0]
