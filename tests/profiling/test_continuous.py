"""Continuous profiling in one process: one profile per interval over contiguous windows, the last partial
window at shutdown, samples linked to spans; off by default at no cost (nothing imported, no hook)."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

from opentelemetry import trace

from otel_perf.profiling import spans
from otel_perf.profiling.continuous import ContinuousProfiler
from tests.conftest import clean_env
from tests.helpers.profiles import data_model_problems, leaf_shares_by_span


class Collected:
    """A profile exporter that keeps what it is given (the real ones are tested in tests/exporters)."""

    def __init__(self) -> None:
        self.requests: list[Any] = []
        self.shut_down = False

    def export(self, request: Any, samples: int) -> bool:
        self.requests.append(request)
        return True

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True

    def shutdown(self) -> None:
        self.shut_down = True


def burn_for_profile(stop: threading.Event) -> None:
    while not stop.is_set():
        total = 0
        for i in range(20_000):
            total += i * i


def test_one_profile_per_interval_then_the_last_partial_one_at_shutdown(tracer_provider: Any) -> None:
    """Windows follow each other without gap or overlap; the work done in a span is linked to it and its
    hot function has the largest share; shutdown exports what was sampled since the last interval."""
    spans.install()
    exporter = Collected()
    profiler = ContinuousProfiler("cpu", 100, 0.5, exporter, resource=({"service.name": "t"}, ""))
    stop = threading.Event()
    tracer = trace.get_tracer("test")
    found: list[Any] = []

    def work() -> None:
        with tracer.start_as_current_span("busy") as span:
            found.append(span)
            burn_for_profile(stop)

    thread = threading.Thread(target=work, name="busy")
    profiler.start()
    thread.start()
    try:
        time.sleep(1.8)  # at least two 0.5 s intervals, even when this machine is slow to schedule
        stop.set()
        thread.join(5)
        exported_before = len(exporter.requests)
        profiler.shutdown()
    finally:
        stop.set()
        spans.uninstall()
    assert exported_before >= 2
    assert len(exporter.requests) == exported_before + 1  # the partial window
    assert exporter.shut_down
    profiles = [r.resource_profiles[0].scope_profiles[0].profiles[0] for r in exporter.requests]
    for request in exporter.requests:
        assert data_model_problems(request) == []
        (pid,) = [kv.value.int_value for kv in request.resource_profiles[0].resource.attributes
                  if kv.key == "process.pid"]
        assert pid > 0
    for before, after in itertools.pairwise(profiles):
        gap = after.time_unix_nano - (before.time_unix_nano + before.duration_nano)
        assert abs(gap) < 50_000_000, gap  # contiguous windows (the wall and monotonic clocks agree)
    span_id = format(found[0].get_span_context().span_id, "016x")
    shares = leaf_shares_by_span(exporter.requests)[span_id]
    assert max(shares, key=shares.__getitem__) == "burn_for_profile", shares
    profiler.shutdown()  # idempotent
    assert len(exporter.requests) == exported_before + 1


def _python(tmp_path: Path, code: str) -> subprocess.CompletedProcess[str]:
    app = tmp_path / "app.py"
    app.write_text(textwrap.dedent(code))
    done = subprocess.run([sys.executable, str(app)], cwd=tmp_path, env=clean_env(), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_off_by_default_imports_nothing_and_hooks_nothing(tmp_path: Path) -> None:
    """configure() without OTEL_PERF_PROFILING: no continuous-profiling module or profiles message is
    imported, the runtime context is not hooked, no profiler thread runs."""
    done = _python(tmp_path, """
        import sys, threading
        import otel_perf
        from opentelemetry import context
        handle = otel_perf.configure("off", output_dir="out")
        loaded = [m for m in ("otel_perf.profiling.continuous", "otel_perf.profiling.otlp",
                              "otel_perf.exporters.profiles", "otel_perf.profiling.hotspots",
                              "opentelemetry.proto.profiles.v1development.profiles_pb2") if m in sys.modules]
        hooked = type(context._RUNTIME_CONTEXT).__name__ == "TrackingRuntimeContext"
        threads = [t.name for t in threading.enumerate() if t.name.startswith("otel-perf-profil")]
        handle.shutdown()
        print(loaded, hooked, threads)
    """)
    assert done.stdout.strip() == "[] False []"
    assert not list((tmp_path / "out").glob("profiles-*"))


def test_handle_shutdown_exports_the_last_partial_interval(tmp_path: Path) -> None:
    """A short program with a 60 s interval: handle.shutdown() exports the one partial profile, whose
    samples in the tool call link to it, and takes the span-tracking hooks off; nothing is printed."""
    done = _python(tmp_path, """
        import otel_perf

        handle = otel_perf.configure("short", profiling="cpu", profiling_interval=60, output_dir="out")

        def burn_in_tool():
            total = 0
            for i in range(3_000_000):
                total += i * i
            return total

        @otel_perf.tool
        def search(query):
            return burn_in_tool()

        search("x")
        from opentelemetry import context
        hooked = type(context._RUNTIME_CONTEXT).__name__ == "TrackingRuntimeContext"
        handle.shutdown()
        if not hooked or type(context._RUNTIME_CONTEXT).__name__ == "TrackingRuntimeContext":
            raise SystemExit("span tracking was not on while profiling, or stayed on after shutdown")
    """)
    assert done.stdout == "" and done.stderr == ""
    (profiles,) = (tmp_path / "out").glob("profiles-*.jsonl")
    (traces,) = (tmp_path / "out").glob("traces-*.jsonl")
    (line,) = profiles.read_text().splitlines()
    request = json.loads(line)
    tool = next(s for r in map(json.loads, traces.read_text().splitlines())
                for rs in r["resourceSpans"] for ss in rs["scopeSpans"] for s in ss["spans"]
                if s["name"] == "execute_tool search")
    links = request["dictionary"]["linkTable"][1:]
    assert {(link["traceId"], link["spanId"]) for link in links} == {(tool["traceId"], tool["spanId"])}
