"""End to end: span labels in the debug server's profiles, read by ``go tool pprof`` (Debian's golang-go).

A real program started by ``opentelemetry-instrument`` with ``OTEL_PERF_DEBUG_ADDR`` runs two kinds of
short spans one after the other in its main thread (``kind-a`` burning CPU in ``crunch_a``, ``kind-b`` in
``crunch_b``), and one long span in another thread (``background``, in ``crunch_background``), whose id it
prints. ``go tool pprof -tags`` must list the ``span_id`` values and the root span names, and
``-tagfocus`` on one span (or one root name) must show only that span's functions; ``otel-perf profile
--span`` must keep only one span's samples.
"""

from __future__ import annotations

import re
import subprocess
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from otel_perf.profiling import pprof
from tests.conftest import BIN, clean_env
from tests.profiling.test_pprof_e2e import _free_port, pprof_tool, top_functions

pytestmark = pytest.mark.e2e

WORKLOAD = textwrap.dedent('''
    import threading
    import time

    from opentelemetry import trace

    tracer = trace.get_tracer("workload")


    def crunch_a():
        total = 0
        for i in range(200_000):
            total += i * i
        return total


    def crunch_b():
        total = 0
        for i in range(200_000):
            total ^= i * 3
        return total


    def crunch_background(stop):
        while not stop.is_set():
            sum(i * i for i in range(50_000))
            time.sleep(0.001)


    def background():
        with tracer.start_as_current_span("background") as span:
            print("background", format(span.get_span_context().span_id, "016x"), flush=True)
            crunch_background(threading.Event())


    threading.Thread(target=background, name="background", daemon=True).start()
    time.sleep(0.2)
    print("ready", flush=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        with tracer.start_as_current_span("kind-a"):
            crunch_a()
        with tracer.start_as_current_span("kind-b"):
            crunch_b()
''')


@pytest.fixture(scope="module")
def workload(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(debug server URL, the background span's id) of the workload, started the launcher's way."""
    app = tmp_path_factory.mktemp("app") / "workload.py"
    app.write_text(WORKLOAD)
    port = _free_port()
    env = clean_env(OTEL_PYTHON_DISTRO="otel_perf", OTEL_PYTHON_CONFIGURATOR="otel_perf", OTEL_SERVICE_NAME="w",
                    OTEL_TRACES_EXPORTER="none", OTEL_METRICS_EXPORTER="none", OTEL_LOGS_EXPORTER="none",
                    OTEL_PERF_DEBUG_ADDR=f"127.0.0.1:{port}")
    process = subprocess.Popen([str(BIN / "opentelemetry-instrument"), "python", str(app)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        assert process.stdout is not None
        first = process.stdout.readline().split()
        assert first[:1] == ["background"], first
        assert process.stdout.readline().strip() == "ready"
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
        yield url, first[1]
    finally:
        process.kill()
        process.communicate(timeout=30)


def tag_values(tags: str, key: str) -> dict[str, str]:
    """The values `go tool pprof -tags` lists under ``key`` ("   340.8ms (  100%): value"), with their
    totals."""
    block = re.search(rf"^ {key}: Total .*?(?=^ \S|\Z)", tags, re.M | re.S)
    assert block is not None, tags
    return {value: total for total, value in re.findall(r"^\s+(\S+) \(\s*[\d.]+%\): (\S+)$", block.group(0), re.M)}


def test_go_pprof_lists_span_labels_and_focuses_on_one_span(workload: tuple[str, str], tmp_path: Path) -> None:
    """-tags lists span_id values (many short spans, and the background one) and the root names; focusing
    on one span of kind-a, or on the root name kind-b, leaves only that kind's function."""
    url, background = workload
    profile = tmp_path / "cpu.pb.gz"
    with urllib.request.urlopen(f"{url}/debug/pprof/profile?seconds=3", timeout=60) as response:
        profile.write_bytes(response.read())
    tags = pprof_tool(tmp_path, "-tags", str(profile))
    span_ids = tag_values(tags, "span_id")
    assert len(span_ids) >= 5, tags
    assert all(re.fullmatch(r"[0-9a-f]{16}", span_id) for span_id in span_ids)
    assert background in span_ids
    assert {"kind-a", "kind-b", "background"} <= set(tag_values(tags, "span_name")), tags
    assert set(tag_values(tags, "trace_id")) and all(len(t) == 32 for t in tag_values(tags, "trace_id"))

    decoded = pprof.decode(profile.read_bytes())
    span_of_a = next(
        labels["span_id"] for labels in ({label.key: label.value for label in s.labels} for s in decoded.samples)
        if labels.get("span_name") == "kind-a")
    focused = top_functions(pprof_tool(tmp_path, "-top", f"-tagfocus=span_id={span_of_a}", str(profile)))
    assert "crunch_a" in focused and "crunch_b" not in focused and "crunch_background" not in focused, focused
    by_root = top_functions(pprof_tool(tmp_path, "-top", "-tagfocus=span_name=kind-b", str(profile)))
    assert by_root[0] == "crunch_b" and "crunch_a" not in by_root, by_root
    everything = top_functions(pprof_tool(tmp_path, "-top", str(profile)))
    assert {"crunch_a", "crunch_b"} <= set(everything)


def test_profile_command_keeps_only_one_span(workload: tuple[str, str], tmp_path: Path) -> None:
    """otel-perf profile --span: the saved profile (and its flame graph) has the background span's
    samples only; a span that did not run is an error, as is something that is no span id."""
    url, background = workload
    out, page = tmp_path / "span.pb.gz", tmp_path / "span.html"
    done = subprocess.run([str(BIN / "otel-perf"), "profile", url, "--seconds", "2", "--span", background,
                           "-o", str(out), "--flamegraph", str(page), "-q"],
                          capture_output=True, text=True, timeout=120, env=clean_env())
    assert done.returncode == 0, done.stderr
    assert top_functions(pprof_tool(tmp_path, "-top", str(out)))[0] == "crunch_background"
    assert set(tag_values(pprof_tool(tmp_path, "-tags", str(out)), "span_id")) == {background}
    assert f"span {background}" in page.read_text()

    missing = subprocess.run([str(BIN / "otel-perf"), "profile", url, "--seconds", "1", "--span",
                              "0123456789abcdef", "-o", str(tmp_path / "none.pb.gz"), "-q"],
                             capture_output=True, text=True, timeout=120, env=clean_env())
    assert missing.returncode == 1
    assert "no sample of span 0123456789abcdef" in missing.stderr and "other spans were sampled" in missing.stderr
    assert not (tmp_path / "none.pb.gz").exists()

    malformed = subprocess.run([str(BIN / "otel-perf"), "profile", url, "--span", "not-a-span"],
                               capture_output=True, text=True, timeout=60, env=clean_env())
    assert malformed.returncode == 2 and "is not a span id" in malformed.stderr
    assert "Traceback" not in malformed.stderr
