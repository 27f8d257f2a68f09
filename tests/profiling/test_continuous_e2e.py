"""End to end: continuous profiling of real programs into the real OTLP receiver, files and a spool.

Programs run in their own Python, under ``opentelemetry-instrument`` or calling ``otel_perf.configure()``,
with ``OTEL_PERF_PROFILING=cpu``. What the receiver gets is decoded with ``opentelemetry-proto``'s own
messages and checked against the data model's rules a consumer relies on (``tests/helpers/profiles.py``),
the resource of the other signals, the exported traces (every link points at a span that was exported)
and the work done (a known hot function in a known span has the largest share of that span's samples).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from otel_perf.testing import OTLPReceiver
from tests.conftest import BIN, clean_env, require_binary
from tests.helpers.profiles import data_model_problems, leaf_shares_by_span, linked_spans

pytestmark = pytest.mark.e2e

SELECTORS = {"OTEL_PYTHON_DISTRO": "otel_perf", "OTEL_PYTHON_CONFIGURATOR": "otel_perf"}

# Three tool calls burning CPU in burn_in_search for 0.8 s each: with 1 s profiles, periodic profiles and
# the last partial one at exit.
TOOLS = """
    import os, sys, time
    import otel_perf

    if sys.argv[1] == "configure":
        handle = otel_perf.configure("tools-app", profiling="cpu", profiling_interval=1)

    def burn_in_search(seconds):
        total, deadline = 0, time.monotonic() + seconds
        while time.monotonic() < deadline:
            for i in range(10_000):
                total += i * i
        return total

    @otel_perf.tool
    def search(query):
        return burn_in_search(0.8)

    print(os.getpid(), flush=True)
    for query in ("a", "b", "c"):
        search(query)
    if sys.argv[1] == "configure":
        handle.shutdown()
"""


def _run(tmp_path: Path, code: str, env: dict[str, str], *args: str, launcher: bool = False,
         command: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    app = tmp_path / "app.py"
    app.write_text(textwrap.dedent(code))
    argv = command or [sys.executable, str(app), *args]
    if launcher:
        argv = [str(BIN / "opentelemetry-instrument"), *argv]
        env = {**env, **SELECTORS}
    done = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _attributes(request: Any) -> dict[str, Any]:
    (resource_profiles,) = request.resource_profiles
    out: dict[str, Any] = {}
    for kv in resource_profiles.resource.attributes:
        kind = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, kind) if kind else None
    return out


@pytest.mark.parametrize(("way", "protocol"), [("launcher", "grpc"), ("configure", "http/protobuf")])
def test_profiles_reach_the_receiver_linked_to_exported_spans(way: str, protocol: str, otlp_receiver: OTLPReceiver,
                                                              tmp_path: Path) -> None:
    """Periodic profiles and the last partial one, over gRPC or HTTP, decode and keep the data model's
    rules; they carry the traces' resource plus the program's process.pid; every link points at an
    exported span; in each tool call the hot function has the largest share."""
    env = clean_env(**otlp_receiver.env(protocol), OTEL_SERVICE_NAME="tools-app", OTEL_PERF_PROFILING="cpu",
                    OTEL_PERF_PROFILING_INTERVAL="1")
    done = _run(tmp_path, TOOLS, env, way, launcher=way == "launcher")
    pid = int(done.stdout.split()[0])
    otlp_receiver.wait_for(lambda r: len(r.spans()) >= 3 and r.profiles(), timeout=20)
    transport = "grpc" if protocol == "grpc" else "http"
    requests = otlp_receiver.profiles(transport)
    assert len(requests) >= 2, len(requests)  # at least one interval, and the partial one at exit
    for request in requests:
        assert data_model_problems(request) == []
    spans = otlp_receiver.spans()
    trace_resource = {k: v for k, v in spans[0].resource.items()}
    for request in requests:
        attributes = _attributes(request)
        assert attributes["process.pid"] == pid
        assert {k: v for k, v in attributes.items() if k != "process.pid"} == trace_resource
    exported = {(s.trace_id, s.span_id) for s in spans}
    links = linked_spans(requests)
    assert links and links <= exported
    shares = leaf_shares_by_span(requests)
    tools = [s for s in spans if s.name == "execute_tool search"]
    assert len(tools) == 3
    sampled = [s for s in tools if s.span_id in shares]
    assert len(sampled) >= 2, shares
    for span in sampled:
        by_function = shares[span.span_id]
        assert max(by_function, key=by_function.__getitem__) == "burn_in_search", by_function


# A parent running process-pool jobs (fork and spawn workers) and forking a child by hand; each burns CPU
# in its own function inside its own span.
PROCESSES = """
    import concurrent.futures, multiprocessing, os, sys
    from opentelemetry import trace

    def burn_in_job(n):
        total = 0
        for i in range(n):
            total += i * i
        return os.getpid()

    def burn_in_child():
        total = 0
        for i in range(3_000_000):
            total += i * i

    if __name__ == "__main__":
        if sys.argv[1] == "configure":
            import otel_perf

            handle = otel_perf.configure("procs", profiling="cpu", profiling_interval=60)
        print(os.getpid(), flush=True)
        workers = set()
        for method in ("fork", "spawn"):
            with concurrent.futures.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context(method)) as pool:
                workers |= set(pool.map(burn_in_job, [2_000_000] * 4))
        print(" ".join(map(str, sorted(workers))), flush=True)
        pid = os.fork()
        if pid == 0:
            with trace.get_tracer("app").start_as_current_span("child-work"):
                burn_in_child()
            sys.exit(0)
        os.waitpid(pid, 0)
        print(pid, flush=True)
"""


@pytest.mark.parametrize("way", ["launcher", "configure"])
def test_pool_workers_and_forked_children_profile_themselves(way: str, otlp_receiver: OTLPReceiver,
                                                             tmp_path: Path) -> None:
    """Fork and spawn pool workers and a forked child each export their own profiles under their own
    process.pid (also when the worker leaves by os._exit), with their samples linked to their spans; the
    parent's profiles have none of their work. Under configure() a spawn worker starts profiling when it
    configures itself from its parent's snapshot (the setting given as an argument, not in the
    environment)."""
    env = clean_env(**otlp_receiver.env("grpc"), OTEL_SERVICE_NAME="procs")
    if way == "launcher":
        env.update(OTEL_PERF_PROFILING="cpu", OTEL_PERF_PROFILING_INTERVAL="60")
    done = _run(tmp_path, PROCESSES, env, way, launcher=way == "launcher")
    parent, workers, child = done.stdout.split("\n")[:3]
    worker_pids = {int(p) for p in workers.split()}
    otlp_receiver.wait_for(lambda r: {_attributes(q)["process.pid"] for q in r.profiles()}
                           >= {int(child)} | worker_pids, timeout=30)
    by_pid: dict[int, list[Any]] = {}
    for request in otlp_receiver.profiles():
        assert data_model_problems(request) == []
        by_pid.setdefault(_attributes(request)["process.pid"], []).append(request)
    spans = otlp_receiver.spans()
    exported = {(s.trace_id, s.span_id) for s in spans}
    jobs = {s.span_id for s in spans if s.name.endswith("burn_in_job")}
    for pid in worker_pids:
        shares = leaf_shares_by_span(by_pid[pid])
        linked = set(shares) & jobs
        assert linked, (pid, shares)
        for span_id in linked:
            assert max(shares[span_id], key=shares[span_id].__getitem__) == "burn_in_job"
        assert linked_spans(by_pid[pid]) <= exported
    (child_span,) = [s for s in spans if s.name == "child-work"]
    child_shares = leaf_shares_by_span(by_pid[int(child)])
    assert max(child_shares[child_span.span_id], key=child_shares[child_span.span_id].__getitem__) == "burn_in_child"
    parent_leaves = {leaf for shares in leaf_shares_by_span(by_pid.get(int(parent), [])).values() for leaf in shares}
    assert not parent_leaves & {"burn_in_job", "burn_in_child"}


def test_durable_mode_spools_profiles_like_the_other_signals(otlp_receiver: OTLPReceiver, tmp_path: Path) -> None:
    """With OTEL_PERF_SPOOL_DIR, profiles go through <spool>/profiles/ and are delivered (the spool ends
    empty)."""
    spool = tmp_path / "spool"
    env = clean_env(**otlp_receiver.env("grpc"), OTEL_SERVICE_NAME="durable", OTEL_PERF_PROFILING="cpu",
                    OTEL_PERF_SPOOL_DIR=str(spool))
    _run(tmp_path, TOOLS, env, "launcher", launcher=True)
    otlp_receiver.wait_for(lambda r: r.profiles(), timeout=30)
    assert (spool / "profiles").is_dir()
    assert not list((spool / "profiles").glob("*.otlp"))
    assert linked_spans(otlp_receiver.profiles()) <= {(s.trace_id, s.span_id) for s in otlp_receiver.spans()}


def test_otel_perf_run_writes_profiles_beside_traces_and_the_report_names_the_hot_function(tmp_path: Path) -> None:
    """No endpoint under otel-perf run: profiles-*.jsonl next to traces and metrics; otel-perf report's
    section on slow spans names the function the tool burned CPU in first, in every format, and the HTML
    report's flame graph of it renders in headless Chromium."""
    out = tmp_path / "data"
    env = clean_env(OTEL_SERVICE_NAME="files-app", OTEL_PERF_PROFILING="cpu", OTEL_PERF_OUTPUT_DIR=str(out))
    app = tmp_path / "app.py"
    _run(tmp_path, TOOLS, env, command=[str(BIN / "otel-perf"), "run", "-q", "--", "python", str(app), "launcher"])
    kinds = {path.name.split("-")[0] for path in out.glob("*.jsonl")}
    assert {"traces", "metrics", "profiles"} <= kinds
    report = subprocess.run([str(BIN / "otel-perf"), "report", str(out)], capture_output=True, text=True,
                            timeout=120, env=clean_env())
    assert report.returncode in (0, 1), report.stderr
    section = report.stdout.split("Slow spans and their hot functions:", 1)[1]
    first_tool = section.split("tool call 'execute_tool search'", 1)[1]
    rows = [line.split() for line in first_tool.splitlines()[2:] if line.strip().endswith(")")]
    assert rows and rows[0][1] == "burn_in_search", first_tool
    document = json.loads(subprocess.run([str(BIN / "otel-perf"), "report", str(out), "--format", "json"],
                                         capture_output=True, text=True, timeout=120, env=clean_env()).stdout)
    hot = document["hot_spans"]
    assert hot["profiles"] >= 1
    tools = [s for s in hot["spans"] if s["kind"] == "tool call"]
    assert len(tools) == 3 and all(s["functions"][0]["name"] == "burn_in_search" for s in tools if s["functions"])
    assert sum(1 for s in tools if s["functions"]) >= 2
    markdown = subprocess.run([str(BIN / "otel-perf"), "report", str(out), "--format", "markdown"],
                              capture_output=True, text=True, timeout=120, env=clean_env()).stdout
    assert "`burn_in_search`" in markdown.split("### Slow spans and their hot functions", 1)[1]

    chromium = require_binary("chromium", "chromium")
    page = tmp_path / "report.html"
    subprocess.run([str(BIN / "otel-perf"), "report", str(out), "--html", str(page)], capture_output=True,
                   timeout=120, env=clean_env())
    dom = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'chromium'}", "--virtual-time-budget=3000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    charts = dom.stdout.count('class="fg-chart" data-rendered="1"')
    assert charts >= 2, dom.stdout[-3000:]
    assert '<div class="fg-frame"' in dom.stdout and ">burn_in_search</div>" in dom.stdout


def test_a_backend_that_is_down_does_not_hold_the_exit(otlp_receiver: OTLPReceiver, tmp_path: Path) -> None:
    """With the backend refusing (UNAVAILABLE) and a 10 s exporter timeout, the last profile gets one
    attempt at exit: the program ends about when its work does, and says once that profiles are dropped."""
    otlp_receiver.status = "unavailable"
    env = clean_env(OTEL_SERVICE_NAME="down", OTEL_PERF_PROFILING="cpu", OTEL_TRACES_EXPORTER="none",
                    OTEL_METRICS_EXPORTER="none", OTEL_LOGS_EXPORTER="none", OTEL_EXPORTER_OTLP_TIMEOUT="10",
                    OTEL_EXPORTER_OTLP_PROFILES_ENDPOINT=otlp_receiver.grpc_endpoint,
                    OTEL_EXPORTER_OTLP_PROFILES_INSECURE="true")
    began = time.monotonic()
    done = _run(tmp_path, TOOLS, env, "launcher", launcher=True)
    assert time.monotonic() - began < 2.4 + 5  # the work, the launcher's start-up; not the 10 s timeout
    assert done.stderr.count("profiles cannot be sent") == 1
    assert not otlp_receiver.profiles()
