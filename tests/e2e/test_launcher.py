"""The launcher way in, end to end: opentelemetry-instrument and otel-perf run as real subprocesses."""

from __future__ import annotations

import subprocess
import textwrap
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

SELECTORS = {"OTEL_PYTHON_DISTRO": "otel_perf", "OTEL_PYTHON_CONFIGURATOR": "otel_perf"}


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


def test_otel_perf_configurator_runs_beside_opentelemetry_distro(tmp_path: Path) -> None:
    """With opentelemetry-distro also installed, the selectors make otel-perf's distro and configurator run:
    its exporter defaults apply (files, not a failing localhost:4317) and its start-up sets the root marker."""
    from importlib.metadata import entry_points

    assert "distro" in {ep.name for ep in entry_points(group="opentelemetry_distro")}, \
        "opentelemetry-distro must be installed for this test (test extra)"
    (tmp_path / "app.py").write_text(APP)
    env = clean_env(**SELECTORS, OTEL_PERF_OUTPUT_DIR=str(tmp_path / "out"))
    out = _run([str(BIN / "opentelemetry-instrument"), "python", "app.py"], env, tmp_path)
    assert "root-marker=" in out.stdout and out.stdout.split("root-marker=")[1].strip()
    assert [s.name for _, r in iter_requests(tmp_path / "out") for s in _otlpjson.spans(r)] == ["parent"]

    other = clean_env(OTEL_PYTHON_DISTRO="distro", OTEL_PYTHON_CONFIGURATOR="configurator",
                      OTEL_TRACES_EXPORTER="none", OTEL_METRICS_EXPORTER="none", OTEL_LOGS_EXPORTER="none")
    out = _run([str(BIN / "opentelemetry-instrument"), "python", "app.py"], other, tmp_path)
    assert out.stdout.strip() == "root-marker="  # otel-perf's configurator did not run


def test_broken_sdk_setup_does_not_abort_auto_instrumentation(tmp_path: Path) -> None:
    """A bad exporter name makes the SDK set-up fail; otel-perf logs it and the launcher still instruments
    the program (here: contrib's threading instrumentation is applied), and the program runs."""
    (tmp_path / "app.py").write_text(textwrap.dedent("""
        from opentelemetry.instrumentation.threading import ThreadingInstrumentor
        print("threading-instrumented=%s" % ThreadingInstrumentor().is_instrumented_by_opentelemetry)
    """))
    env = clean_env(**SELECTORS, OTEL_TRACES_EXPORTER="no_such_exporter", OTEL_PERF_MEMORY_THRESHOLD="abc")
    out = _run([str(BIN / "opentelemetry-instrument"), "python", "app.py"], env, tmp_path)
    assert "threading-instrumented=True" in out.stdout
    assert "could not be set up" in out.stderr
    assert "OTEL_PERF_MEMORY_THRESHOLD" in out.stderr and "'abc'" in out.stderr
