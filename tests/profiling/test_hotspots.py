"""otel-perf report's section "slow spans and their hot functions", on hand-made OTLP JSON lines files:
which spans are picked, whose samples count (the span's and its descendants'), shares, and bad input."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from otel_perf.exporters.files import request_to_json
from otel_perf.profiling import otlp
from otel_perf.profiling.hotspots import ProfileCollector
from otel_perf.profiling.snapshot import Snapshot
from otel_perf.report import build_report, render_html, render_json, render_markdown, render_text
from tests.conftest import BIN, clean_env

TRACE = "0af7651916cd43dd8448eb211c80319c"
SECOND = 1_000_000_000


def span(name: str, span_id: str, start: float, end: float, parent: str = "", kind: int = 1,
         **attributes: str) -> dict[str, Any]:
    return {"traceId": TRACE, "spanId": span_id, "parentSpanId": parent, "name": name, "kind": kind,
            "startTimeUnixNano": str(int(start * SECOND)), "endTimeUnixNano": str(int(end * SECOND)),
            "attributes": [{"key": k, "value": {"stringValue": v}} for k, v in attributes.items()]}


def traces(*spans: dict[str, Any]) -> str:
    return json.dumps({"resourceSpans": [{"resource": {"attributes": [
        {"key": "service.name", "value": {"stringValue": "svc"}}]},
        "scopeSpans": [{"scope": {"name": "otel_perf"}, "spans": list(spans)}]}]})


TOOL = {"gen_ai.operation.name": "execute_tool"}
SLOW, FAST, CHILD, JOB, PROGRAM = "1" * 16, "2" * 16, "3" * 16, "4" * 16, "5" * 16


def profile_line() -> str:
    """Samples of the slow tool (mostly parse_in_tool), of a program under it, and of a pool job."""
    locations = [(("main", "app.py", 1), 2), (("parse_in_tool", "app.py", 10), 11),
                 (("format_result", "app.py", 20), 21), (("wait_child", "app.py", 30), 31),
                 (("job_work", "jobs.py", 5), 6)]

    def labels(span_id: str) -> tuple[str, str, tuple[str, str, str]]:
        return ("MainThread", "", (TRACE, span_id, "root"))

    snapshot = Snapshot(mode="cpu", period_ns=10_000_000, start_unix_ns=SECOND, duration_ns=10 * SECOND,
                        locations=locations, comments=[], counts={
                            (labels(SLOW), (1, 2)): [70, 700_000_000],
                            (labels(SLOW), (1, 3)): [20, 200_000_000],
                            (labels(CHILD), (1, 4)): [10, 100_000_000],
                            (labels(JOB), (1, 5)): [5, 50_000_000],
                            (("MainThread", "", ("", "", "")), (1,)): [3, 30_000_000],
                        })
    return request_to_json(otlp.encode(snapshot, {"service.name": "svc", "process.pid": 9}))


def write_run(directory: Path) -> Path:
    directory.mkdir()
    (directory / "traces-1.jsonl").write_text("\n".join([
        traces(span("execute_tool slow", SLOW, 1, 3, **TOOL), span("execute_tool fast", FAST, 3, 3.1, **TOOL)),
        traces(span("gzip", CHILD, 2, 2.5, parent=SLOW, kind=3, **{"process.executable.name": "gzip"}),
               span("pool work", JOB, 4, 5, **{"otel_perf.pool.name": "pool"})),
    ]) + "\n")
    (directory / "profiles-1.jsonl").write_text(profile_line() + "\n")
    return directory


def test_the_slowest_spans_of_each_kind_with_their_hot_functions(tmp_path: Path) -> None:
    """The tool's samples include those of the program run under it (a descendant); shares are of the
    span's sampled time; a span without samples says why; each kind is listed."""
    collector = ProfileCollector()
    for path in sorted(write_run(tmp_path / "run").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            collector.add(json.loads(line))
    assert collector.profiles == 1
    hot = {h.span_id: h for h in collector.hot_spans()}
    assert [h.kind for h in collector.hot_spans()] == ["tool call", "tool call", "pool job", "program"]
    slow = hot[SLOW]
    assert (slow.sample_type, slow.value) == ("cpu", 1_000_000_000)
    assert [(f.name, round(f.share, 2)) for f in slow.functions] == [
        ("parse_in_tool", 0.7), ("format_result", 0.2), ("wait_child", 0.1)]
    assert hot[FAST].samples == 0 and hot[FAST].functions == []
    assert [f.name for f in hot[JOB].functions] == ["job_work"]
    assert [f.name for f in hot[CHILD].functions] == ["wait_child"]
    assert sorted(map(tuple, (stack for stack, _ in slow.stacks))) == [
        ("main", "format_result"), ("main", "parse_in_tool"), ("main", "wait_child")]


def test_every_format_shows_the_section(tmp_path: Path) -> None:
    """Text, Markdown, JSON and HTML (with one flame graph per span that has samples)."""
    from otel_perf._objectives import DEFAULT_OBJECTIVES

    report = build_report([write_run(tmp_path / "run")], DEFAULT_OBJECTIVES)
    text = render_text(report)
    section = text.split("Slow spans and their hot functions:", 1)[1]
    assert "tool call 'execute_tool slow', 2 s in svc" in section
    assert " 70.0%  parse_in_tool  (app.py)" in section
    assert "no profile samples" in section.split("execute_tool fast", 1)[1].split("\n\n")[0]
    assert "- 70.0% `parse_in_tool` (app.py)" in render_markdown(report)
    document = json.loads(render_json(report))["hot_spans"]
    assert document["profiles"] == 1
    assert document["spans"][0]["functions"][0] == {"name": "parse_in_tool", "file": "app.py", "share": 0.7,
                                                    "value_nanoseconds": 700_000_000}
    page = render_html(report)
    assert page.count('class="fg-embed"') == 3 and "function fgDraw" in page and "http" not in page


def test_without_profiles_the_section_says_how_to_get_them(tmp_path: Path) -> None:
    """Spans but no profiles: one line says to run with OTEL_PERF_PROFILING; nothing else is guessed."""
    from otel_perf._objectives import DEFAULT_OBJECTIVES

    run = write_run(tmp_path / "run")
    (run / "profiles-1.jsonl").unlink()
    text = render_text(build_report([run], DEFAULT_OBJECTIVES))
    assert text.rstrip().endswith("run with OTEL_PERF_PROFILING=cpu to see where the slowest spans spent their "
                                  "time.")
    empty = tmp_path / "nothing"
    empty.mkdir()
    (empty / "metrics.jsonl").write_text('{"resourceMetrics": []}\n')
    assert "Slow spans" not in render_text(build_report([empty], DEFAULT_OBJECTIVES))


def test_a_profile_with_an_index_out_of_range_is_bad_input(tmp_path: Path) -> None:
    """A profiles line whose indices do not fit its tables: exit 2, naming the file, line and index."""
    run = write_run(tmp_path / "run")
    request = json.loads(profile_line())
    request["resourceProfiles"][0]["scopeProfiles"][0]["profiles"][0]["samples"][0]["stackIndex"] = 99
    (run / "profiles-1.jsonl").write_text(profile_line() + "\n" + json.dumps(request) + "\n")
    done = subprocess.run([str(BIN / "otel-perf"), "report", str(run)], capture_output=True, text=True,
                          timeout=60, env=clean_env())
    assert done.returncode == 2
    assert f"{run / 'profiles-1.jsonl'} line 2" in done.stderr and "stack_index 99" in done.stderr
    assert "Traceback" not in done.stderr
