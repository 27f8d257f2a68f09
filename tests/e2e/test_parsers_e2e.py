"""Parsers under the launcher: the entry point instruments, and a real OTLP receiver gets exact numbers."""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import pytest

from otel_perf.testing import OTLPReceiver
from tests.conftest import BIN, clean_env

pytestmark = pytest.mark.e2e

APP = textwrap.dedent("""
    import argparse, json
    from json import loads  # bound after the launcher instrumented: measured too
    from opentelemetry import trace

    parser = argparse.ArgumentParser()
    parser.add_argument("--name")
    for i in range(50):
        json.loads("[%d]" % i)
    parser.parse_args(["--name", "demo"])
    with trace.get_tracer("app").start_as_current_span("request"):
        loads(json.dumps({"blob": "x" * 300}))
""")


def test_launcher_exports_exact_parse_metrics_and_a_span_for_a_large_input(
    otlp_receiver: OTLPReceiver, tmp_path: Path
) -> None:
    """opentelemetry-instrument python app.py: counts and size sums arrive exactly; one large parse span."""
    (tmp_path / "app.py").write_text(APP)
    env = clean_env(**otlp_receiver.env("grpc"), OTEL_SERVICE_NAME="parsers-e2e",
                    OTEL_PERF_PARSE_SPAN_MIN_BYTES="200")
    done = subprocess.run([str(BIN / "opentelemetry-instrument"), "python", "app.py"], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr

    sizes = {p.attributes["otel_perf.parser.name"]: (p.count, p.sum)
             for p in otlp_receiver.latest_points("otel_perf.parse.size")}
    large = len('{"blob": "' + "x" * 300 + '"}')
    assert sizes["json"] == (51, sum(len(f"[{i}]") for i in range(50)) + large)
    assert sizes["argparse"] == (1, len("--name demo"))
    spans = {s.name: s for s in otlp_receiver.spans()}
    assert set(spans) == {"request", "parse json"}
    assert spans["parse json"].parent_span_id == spans["request"].span_id
    assert spans["parse json"].attributes["otel_perf.parse.input.size"] == large
