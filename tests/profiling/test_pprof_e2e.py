"""End to end: a real program started by ``opentelemetry-instrument`` with ``OTEL_PERF_DEBUG_ADDR``, a known
workload, and ``go tool pprof`` (Debian's golang-go) reading CPU, wall, heap and threads profiles over
HTTP; ``otel-perf profile --flamegraph`` opened in headless Chromium."""

from __future__ import annotations

import re
import socket
import subprocess
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import BIN, clean_env, require_binary

pytestmark = pytest.mark.e2e

WORKLOAD = textwrap.dedent('''
    import sys
    import threading
    import time

    kept = []


    def hot_function(n):
        total = 0
        for i in range(n):
            total += i * i
        return total


    def sleeping_function():
        while True:
            time.sleep(3600)  # blocked: never on CPU


    def allocate_blocks():
        while True:
            kept.append(bytearray(20_000))
            if len(kept) > 2_000:
                del kept[:1_000]
            time.sleep(0.002)


    threading.Thread(target=sleeping_function, name="sleeper", daemon=True).start()
    threading.Thread(target=allocate_blocks, name="allocator", daemon=True).start()
    print("ready", flush=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        hot_function(50_000)
''')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def workload_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The debug server of the workload, started the launcher's way (OTEL_PERF_DEBUG_ADDR)."""
    app = tmp_path_factory.mktemp("app") / "workload.py"
    app.write_text(WORKLOAD)
    port = _free_port()
    env = clean_env(OTEL_PYTHON_DISTRO="otel_perf",
                    OTEL_SERVICE_NAME="w",
                    OTEL_TRACES_EXPORTER="none", OTEL_METRICS_EXPORTER="none", OTEL_LOGS_EXPORTER="none",
                    OTEL_PERF_DEBUG_ADDR=f"127.0.0.1:{port}")
    process = subprocess.Popen([str(BIN / "opentelemetry-instrument"), "python", str(app)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(url + "/debug/pprof/", timeout=5):
                    break
            except (urllib.error.URLError, OSError):
                if process.poll() is not None or time.monotonic() > deadline:
                    process.kill()
                    _, err = process.communicate(timeout=10)
                    pytest.fail(f"debug server did not come up: {err[-2000:]}")
                time.sleep(0.2)
        yield url
    finally:
        process.kill()
        process.communicate(timeout=30)


def pprof_tool(tmp_path: Path, *args: str) -> str:
    go = require_binary("go", "golang-go")
    done = subprocess.run([go, "tool", "pprof", *args], capture_output=True, text=True, timeout=120,
                          env=clean_env(PPROF_TMPDIR=str(tmp_path), HOME=str(tmp_path)))
    assert done.returncode == 0, done.stderr
    return done.stdout


def top_functions(output: str) -> list[str]:
    """Function names of `go tool pprof -top` rows, in order."""
    rows = output.split("flat%", 1)[1].splitlines()[1:]
    return [row.split()[-1] for row in rows if row.strip()]


def test_go_pprof_cpu_profile_is_topped_by_the_hot_function(workload_url: str, tmp_path: Path) -> None:
    """The CPU profile, fetched by go tool pprof itself: hot_function first; no sleeping thread."""
    url = f"{workload_url}/debug/pprof/profile?seconds=2"
    top = pprof_tool(tmp_path, "-top", url)
    assert "Type: cpu" in top
    assert top_functions(top)[0] == "hot_function", top
    traces = pprof_tool(tmp_path, "-traces", url)
    assert "hot_function" in traces
    assert "sleeping_function" not in traces
    assert "thread:  MainThread" in traces


def test_go_pprof_wall_profile_shows_the_sleeping_thread(workload_url: str, tmp_path: Path) -> None:
    """The wall profile has every thread: the sleeper as well as the hot loop, each labelled."""
    url = f"{workload_url}/debug/pprof/wall?seconds=2"
    top = pprof_tool(tmp_path, "-top", url)
    assert "Type: wall" in top
    functions = top_functions(top)
    assert "sleeping_function" in functions and "hot_function" in functions
    traces = pprof_tool(tmp_path, "-traces", url)
    assert "thread:  sleeper" in traces
    assert "sleeping_function" in traces


def test_go_pprof_heap_profile_names_the_allocating_function(workload_url: str, tmp_path: Path) -> None:
    """The heap endpoint starts tracemalloc for the window; allocate_blocks holds the growth."""
    url = f"{workload_url}/debug/pprof/heap?seconds=2"
    top = pprof_tool(tmp_path, "-top", url)
    assert "Type: inuse_space" in top
    assert "allocate_blocks" in top_functions(top)[:3], top
    traces = pprof_tool(tmp_path, "-traces", "-sample_index=inuse_objects", url)
    assert "allocate_blocks" in traces


def test_go_pprof_threads_profile_has_every_thread(workload_url: str, tmp_path: Path) -> None:
    """The threads profile (also at goroutine) lists each thread's stack with its name."""
    traces = pprof_tool(tmp_path, "-traces", f"{workload_url}/debug/pprof/goroutine")
    for expected in ("thread:  sleeper", "sleeping_function", "thread:  allocator", "hot_function"):
        assert expected in traces
    top = pprof_tool(tmp_path, "-top", f"{workload_url}/debug/pprof/threads")
    assert "Type: threads" in top


def test_profile_command_writes_pprof_and_a_flame_graph_chromium_renders(workload_url: str,
                                                                          tmp_path: Path) -> None:
    """otel-perf profile saves what go tool pprof reads and a flame graph whose script draws the hot
    function in headless Chromium, with no network."""
    chromium = require_binary("chromium", "chromium")
    out, page = tmp_path / "cpu.pb.gz", tmp_path / "flame.html"
    done = subprocess.run([str(BIN / "otel-perf"), "profile", workload_url, "--seconds", "2", "-o", str(out),
                           "--flamegraph", str(page)], capture_output=True, text=True, timeout=120,
                          env=clean_env())
    assert done.returncode == 0, done.stderr
    assert re.search(r"cpu: \[#+ *\] +\d+/2 s", done.stderr), done.stderr  # the progress indicator
    assert top_functions(pprof_tool(tmp_path, "-top", str(out)))[0] == "hot_function"
    html = page.read_text()
    assert "http://" not in html.replace(workload_url, "") and "<script src" not in html
    profile_dir = tmp_path / "chromium-profile"
    dom = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile_dir}", "--virtual-time-budget=3000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'data-rendered="1"' in dom.stdout
    frames = re.findall(r'<div class="fg-frame"[^>]*>([^<]*)</div>', dom.stdout)
    assert "hot_function" in frames, frames[:20]


def test_profile_command_reports_server_errors(workload_url: str, tmp_path: Path) -> None:
    """A refused request (here: a bad duration) is reported with the server's message and exit 1."""
    done = subprocess.run([str(BIN / "otel-perf"), "profile", workload_url, "--seconds", "100000",
                           "-o", str(tmp_path / "x.pb.gz")], capture_output=True, text=True, timeout=60,
                          env=clean_env())
    assert done.returncode == 1
    assert "HTTP 400" in done.stderr and "exceeds" in done.stderr
    assert not (tmp_path / "x.pb.gz").exists()


BUSY_ALLOCATOR = textwrap.dedent('''
    import collections
    import sys
    import time

    kept = collections.deque(maxlen=400_000)  # about 1.2 million live blocks when full


    def allocate_records():
        # About 35 MB/s: 1000 small records (some 430 bytes each) every 12 ms.
        i = 0
        announced = time.monotonic() + 1.0
        while True:
            started = time.monotonic()
            for _ in range(1000):
                kept.append({"key": "x" * 64 + str(i), "values": [i, 2, 3]})
                i += 1
            if announced and started > announced:
                print("ready", flush=True)
                announced = 0
            time.sleep(max(0.0, 0.012 - (time.monotonic() - started)))


    allocate_records()
''')


@pytest.mark.parametrize("tracemalloc_frames", ["0", "16"], ids=["started-by-the-request", "running-from-start-up"])
def test_go_pprof_heap_profile_of_a_busy_allocator_finishes_within_its_window(
        tmp_path: Path, tracemalloc_frames: str) -> None:
    """A program allocating about 35 MB/s with a million live blocks: go tool pprof's 3-second heap profile
    arrives within pprof's own 20-second fetch timeout (it took over a minute when the snapshots were
    filtered and compared per block) and names the allocating function. The bound is the user's symptom
    (go tool pprof timing out), with a wide margin: this checks for minutes-long stalls, not for speed."""
    app = tmp_path / "allocator.py"
    app.write_text(BUSY_ALLOCATOR)
    port = _free_port()
    env = clean_env(OTEL_PYTHON_DISTRO="otel_perf",
                    OTEL_TRACES_EXPORTER="none", OTEL_METRICS_EXPORTER="none", OTEL_LOGS_EXPORTER="none",
                    OTEL_PERF_DEBUG_ADDR=f"127.0.0.1:{port}", OTEL_PERF_TRACEMALLOC=tracemalloc_frames)
    process = subprocess.Popen([str(BIN / "opentelemetry-instrument"), "python", str(app)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        top = pprof_tool(tmp_path, "-top", "-timeout", "20", "-seconds", "3",
                         f"http://127.0.0.1:{port}/debug/pprof/heap")
    finally:
        process.kill()
        process.communicate(timeout=30)
    assert "Type: inuse_space" in top
    assert "allocate_records" in top_functions(top), top
