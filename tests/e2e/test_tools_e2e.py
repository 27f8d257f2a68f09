"""End to end: a tool named in OTEL_PERF_TOOLS runs a child Python program; one trace reaches the receiver.

The app runs under ``opentelemetry-instrument`` with otel-perf's distro and configurator and a real OTLP
receiver. The child is started with a plain ``subprocess.run([sys.executable, ...])``: it runs under
otel-perf too because the launcher's ``PYTHONPATH`` (its sitecustomize) and the ``OTEL_*`` variables reach
it, and it continues the trace from the ``TRACEPARENT`` the subprocess instrumentation put in its
environment.
"""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import pytest

from otel_perf.testing import OTLPReceiver
from tests.conftest import BIN, PYTHON, clean_env

pytestmark = pytest.mark.e2e

SPAN_KIND_INTERNAL, SPAN_KIND_CLIENT = 1, 3
STATUS_ERROR = 2
PROGRAM = Path(PYTHON).name

TOOLS = textwrap.dedent("""
    import subprocess
    import sys
    from pathlib import Path

    CHILD = str(Path(__file__).with_name("child.py"))

    def run_child(exit_code):
        return subprocess.run([sys.executable, CHILD, str(exit_code)], timeout=60).returncode

    def failing_tool():
        raise ValueError("the tool failed")
""")

CHILD = textwrap.dedent("""
    import sys
    from opentelemetry import trace

    with trace.get_tracer("child").start_as_current_span("child work"):
        pass
    sys.exit(int(sys.argv[1]))
""")

APP = textwrap.dedent("""
    from opentelemetry import trace
    import mytools

    tracer = trace.get_tracer("app")
    with tracer.start_as_current_span("parent ok"):
        assert mytools.run_child(0) == 0
    with tracer.start_as_current_span("parent failing"):
        assert mytools.run_child(3) == 3
        try:
            mytools.failing_tool()
        except ValueError as exc:
            assert str(exc) == "the tool failed"
        else:
            raise AssertionError("the tool's exception did not propagate")
    print("app done")
""")


def test_tool_runs_child_program_in_one_trace(tmp_path: Path, otlp_receiver: OTLPReceiver) -> None:
    """parent -> execute_tool -> program CLIENT span -> the child's own span, plus both duration metrics."""
    (tmp_path / "mytools.py").write_text(TOOLS)
    (tmp_path / "child.py").write_text(CHILD)
    (tmp_path / "app.py").write_text(APP)
    env = clean_env(**otlp_receiver.env("grpc"), OTEL_SERVICE_NAME="tools-e2e",
                    OTEL_PERF_TOOLS="mytools:run_child,mytools:failing_tool,never_imported_mod:func,not a path")
    result = subprocess.run([str(BIN / "opentelemetry-instrument"), "python", "app.py"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "app done" in result.stdout
    # Reported once each on stderr, naming the variable. The child program inherits OTEL_PERF_TOOLS and
    # never imports mytools either: as a non-root process it does not warn about that, nor about the
    # malformed entry the root already reported.
    assert result.stderr.count("Expected OTEL_PERF_TOOLS") == 1
    assert result.stderr.count("never_imported_mod:func, but module never_imported_mod was never imported") == 1
    assert "mytools:run_child, but module" not in result.stderr

    def complete(receiver: OTLPReceiver) -> bool:
        names = [s.name for s in receiver.spans()]
        return (names.count("child work") == 2 and "execute_tool failing_tool" in names
                and bool(receiver.metric_points("gen_ai.execute_tool.duration"))
                and bool(receiver.metric_points("otel_perf.subprocess.duration")))

    otlp_receiver.wait_for(complete, timeout=30)
    spans = otlp_receiver.spans()
    by_id = {s.span_id: s for s in spans}

    def chain(exit_code: int) -> list[str]:
        """Span names from the child program's span up to the root, for the run with this exit code."""
        child = next(s for s in spans if s.name == "child work"
                     and by_id[s.parent_span_id].attributes.get("process.exit.code") == exit_code)
        names, current = [], child
        while current is not None:
            names.append(current.name)
            assert current.trace_id == child.trace_id
            current = by_id.get(current.parent_span_id)
        return names

    assert chain(0) == ["child work", PROGRAM, "execute_tool run_child", "parent ok"]
    assert chain(3) == ["child work", PROGRAM, "execute_tool run_child", "parent failing"]

    programs = {s.attributes["process.exit.code"]: s for s in spans if s.name == PROGRAM}
    assert {s.kind for s in programs.values()} == {SPAN_KIND_CLIENT}
    assert programs[0].status_code != STATUS_ERROR and "error.type" not in programs[0].attributes
    assert programs[3].status_code == STATUS_ERROR and programs[3].attributes["error.type"] == "3"
    assert programs[0].attributes["process.executable.name"] == PROGRAM
    # otel_perf.process.max_rss only when the child outgrew this parent (tests/instrumentations/test_subprocess.py)
    assert programs[0].attributes["otel_perf.process.cpu.user"] >= 0
    assert programs[0].resource["service.name"] == "tools-e2e"
    # The child's span comes from the child program's own tracer, in the parent's trace (checked above).
    assert {s.scope for s in spans if s.name == "child work"} == {"child"}

    tool_spans = [s for s in spans if s.name.startswith("execute_tool ")]
    assert {s.kind for s in tool_spans} == {SPAN_KIND_INTERNAL}
    assert all(s.attributes["gen_ai.operation.name"] == "execute_tool" for s in tool_spans)
    (failed_tool,) = [s for s in tool_spans if s.name == "execute_tool failing_tool"]
    assert failed_tool.status_code == STATUS_ERROR and failed_tool.attributes["error.type"] == "ValueError"
    assert by_id[failed_tool.parent_span_id].name == "parent failing"

    tool_points = {tuple(sorted(p.attributes.items())): p
                   for p in otlp_receiver.latest_points("gen_ai.execute_tool.duration")}
    ok_key = (("gen_ai.tool.name", "run_child"), ("gen_ai.tool.type", "function"))
    error_key = (("error.type", "ValueError"), ("gen_ai.tool.name", "failing_tool"),
                 ("gen_ai.tool.type", "function"))
    assert tool_points[ok_key].count == 2
    assert tool_points[error_key].count == 1
    assert 1.0 in tool_points[ok_key].explicit_bounds

    program_points = {tuple(sorted(p.attributes.items())): p
                      for p in otlp_receiver.latest_points("otel_perf.subprocess.duration")}
    assert program_points[(("process.executable.name", PROGRAM),)].count == 1
    assert program_points[(("error.type", "3"), ("process.executable.name", PROGRAM))].count == 1
