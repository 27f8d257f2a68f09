"""``otel-perf report``: objectives measured from the OTLP JSON lines files of real runs."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from otel_perf import _semconv as sc
from otel_perf._objectives import DEFAULT_OBJECTIVES, load_objectives
from otel_perf.errors import ConfigError
from otel_perf.report import build_report, histogram_quantile, render_html
from tests.conftest import BIN, clean_env

# A program like the demo's: pool jobs, tool calls and the runtime gauges, recorded through the global SDK
# that `otel-perf run` sets up (files, since no endpoint is set), with the catalogue's names, units and
# boundaries. JOB_SECONDS / TOOL_SECONDS / PEAK_MIB tune it to meet or miss objectives. Metrics are
# exported every 100 ms, so the files hold several cumulative points per series.
APP = r'''
import os, time
from opentelemetry import metrics
from otel_perf import _semconv as sc

meter = metrics.get_meter(sc.INSTRUMENTATION_SCOPE)
def histogram(name, boundaries):
    spec = sc.metric(name)
    return meter.create_histogram(spec.name, unit=spec.unit,
                                  explicit_bucket_boundaries_advisory=list(boundaries))
def gauge(name):
    spec = sc.metric(name)
    return meter.create_gauge(spec.name, unit=spec.unit)

jobs = histogram("otel_perf.pool.job.duration", sc.DURATION_BOUNDARIES)
tools = histogram("gen_ai.execute_tool.duration", sc.TOOL_DURATION_BOUNDARIES)
job_seconds = float(os.environ["JOB_SECONDS"])
tool_seconds = float(os.environ["TOOL_SECONDS"])
peak = int(os.environ["PEAK_MIB"]) * 2**20
pool = {sc.POOL_NAME: "commands", sc.POOL_KIND: sc.POOL_KIND_THREAD, sc.JOB_OUTCOME: sc.OUTCOME_OK}
queue_spec = sc.metric("otel_perf.pool.queue.depth")
queue = meter.create_up_down_counter(queue_spec.name, unit=queue_spec.unit)
for round_ in range(4):
    for i in range(50):
        # 48 of every 50 jobs take JOB_SECONDS, 2 take a hundredth of it: p95 lies in JOB_SECONDS' bucket.
        jobs.record(job_seconds if i >= 2 else job_seconds / 100, pool)
        tools.record(tool_seconds, {sc.GEN_AI_TOOL_NAME: "search", sc.GEN_AI_TOOL_TYPE: "function"})
    queue.add(3, {sc.POOL_NAME: "commands", sc.POOL_KIND: sc.POOL_KIND_THREAD})
    gauge("otel_perf.memory.peak").set(peak // 2 + round_)
    gauge("otel_perf.process_tree.memory.peak").set(peak)
    gauge("otel_perf.gc.pause.max").set(0.002, {sc.CPYTHON_GC_GENERATION: 2})
    gauge("otel_perf.thread.peak").set(4)
    time.sleep(0.25)
'''


def _run_app(tmp_path: Path, name: str, *, job_seconds: float, tool_seconds: float = 0.05,
             peak_mib: int = 100) -> Path:
    """Run APP under `otel-perf run` (the launcher, otel-perf's distro) and return its output directory."""
    app = tmp_path / "app.py"
    app.write_text(APP)
    out = tmp_path / name
    # The app records the catalogue's runtime and memory values itself; the real runtime instrumentation
    # would add the machine's own GC pauses, which on a loaded machine exceed the 10 ms objective, and the
    # real memory instrumentation its own tree peak beside the app's 300 MiB (once 554 MB in a full run).
    env = clean_env(OTEL_PERF_OUTPUT_DIR=str(out), OTEL_SERVICE_NAME=name, OTEL_METRIC_EXPORT_INTERVAL="100",
                    OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="otel_perf_runtime,otel_perf_memory",
                    JOB_SECONDS=str(job_seconds), TOOL_SECONDS=str(tool_seconds), PEAK_MIB=str(peak_mib))
    done = subprocess.run([str(BIN / "otel-perf"), "run", "-q", "--", "python", str(app)], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert list(out.glob("metrics-*.jsonl")), done.stderr
    return out


def _report(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "otel-perf"), "report", *args], env=clean_env(), capture_output=True,
                          text=True, timeout=60)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two real runs: one within every objective, one tuned to miss the command p95 and memory ones."""
    base = tmp_path_factory.mktemp("runs")
    return {
        "good": _run_app(base, "good", job_seconds=0.02),
        "bad": _run_app(base, "bad", job_seconds=0.7, peak_mib=300),
    }


@pytest.mark.e2e
def test_report_on_a_run_within_the_objectives_prints_the_table_and_exits_0(runs: dict[str, Path]) -> None:
    """Every objective the run has data for is PASS; the exit status is 0."""
    done = _report(str(runs["good"]))
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {line.split("  ")[0]: line for line in done.stdout.splitlines()}
    for title in ("command processing p95", "tool execution p99", "worker peak memory", "system total memory",
                  "GC pause", "threads peak"):
        assert rows[title].endswith("PASS"), done.stdout
    assert "All objectives with data met" in done.stdout


@pytest.mark.e2e
def test_report_on_a_run_tuned_to_miss_exits_1_naming_the_missed_objectives(runs: dict[str, Path]) -> None:
    """Slow jobs and a 300 MiB process tree miss their objectives: MISS rows and exit status 1."""
    done = _report(str(runs["bad"]))
    assert done.returncode == 1, done.stdout + done.stderr
    rows = {line.split("  ")[0]: line for line in done.stdout.splitlines()}
    assert rows["command processing p95"].endswith("MISS")
    assert rows["worker peak memory"].endswith("PASS")  # the process itself peaked at 150 MiB
    assert rows["tool execution p99"].endswith("PASS")
    assert "objective(s) missed: command processing p95" in done.stdout


@pytest.mark.e2e
def test_json_output_counts_each_job_once_across_cumulative_exports(runs: dict[str, Path]) -> None:
    """The files hold several cumulative exports; the report uses the latest, so 200 jobs count 200 times,
    and the p95 is interpolated inside the 0.5-0.75 s bucket the slow jobs fell into."""
    done = _report("--format", "json", str(runs["bad"]))
    document = json.loads(done.stdout)
    by_key = {o["key"]: o for o in document["objectives"]}
    assert by_key["command_p95"]["samples"] == 200
    assert 0.5 < by_key["command_p95"]["measured"] <= 0.75
    assert by_key["command_p95"]["status"] == "MISS"
    assert by_key["tool_p99"]["samples"] == 200
    assert by_key["system_memory"]["measured"] == 300 * 2**20
    assert by_key["worker_memory"]["metric"] == "otel_perf.memory.peak"
    assert document["missed"] == ["command_p95"]
    assert document["services"] == ["bad"]


@pytest.mark.e2e
def test_objectives_file_changes_thresholds(runs: dict[str, Path], tmp_path: Path) -> None:
    """A stricter command p95 from --objectives turns the good run into a miss; unknown keys are refused."""
    strict = tmp_path / "strict.toml"
    strict.write_text("[objectives]\ncommand_p95 = 0.005\n")
    done = _report("--objectives", str(strict), str(runs["good"]))
    assert done.returncode == 1
    assert "< 5 ms" in done.stdout
    wrong = tmp_path / "wrong.toml"
    wrong.write_text("[objectives]\ncomand_p95 = 0.3\n")
    done = _report("--objectives", str(wrong), str(runs["good"]))
    assert done.returncode == 2
    assert "comand_p95" in done.stderr


@pytest.mark.e2e
def test_markdown_output_and_several_paths(runs: dict[str, Path]) -> None:
    """Markdown table over both runs together: the slow run's jobs dominate the merged p95."""
    done = _report("--format", "markdown", str(runs["good"]), str(runs["bad"]))
    assert done.returncode == 1
    assert "| objective | measured by | measured | threshold | result |" in done.stdout
    assert "| command processing p95 | otel_perf.pool.job.duration |" in done.stdout
    assert "**MISS**" in done.stdout
    assert "services: bad, good" in done.stdout


@pytest.mark.e2e
def test_html_report_is_self_contained_with_a_chart_per_objective(runs: dict[str, Path],
                                                                  tmp_path: Path) -> None:
    """--html writes one page: the table and inline SVG charts, nothing fetched from anywhere."""
    page = tmp_path / "report.html"
    done = _report("--html", str(page), str(runs["bad"]))
    assert done.returncode == 1
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>")
    # Context charts (here the pool's queue depth) follow the objectives.
    text, _, context = text.partition("<h2>Context</h2>")
    assert "otel_perf.pool.queue.depth" in context
    # One chart per objective: the five the app records, plus CPU and threads where the launcher's runtime
    # instrumentation reported them; an objective without data says so instead.
    assert text.count("<svg") >= 5
    assert text.count("<svg") + text.count('class="nodata"') == len(DEFAULT_OBJECTIVES)
    for fetch in ("<script", "src=", "href=", "@import", "url("):
        assert fetch not in text + context
    assert "command processing p95" in text and ">MISS<" in text


def test_unreadable_input_exits_2(tmp_path: Path) -> None:
    """A path that does not exist, a directory without files, or a binary file is an error, not a PASS."""
    assert _report(str(tmp_path / "nope")).returncode == 2
    done = _report(str(tmp_path))
    assert done.returncode == 2
    assert "no OTLP JSON lines" in done.stderr
    (tmp_path / "metrics.jsonl").write_bytes(b"\xff\xfe\n")
    done = _report(str(tmp_path))
    assert done.returncode == 2
    assert "not UTF-8" in done.stderr


# --- quantiles as Prometheus computes them -----------------------------------------------------------------

@pytest.mark.parametrize(("q", "bounds", "counts", "expected"), [
    # The values promtool checks for the same distributions in deploy/prometheus/rules/*.test.yml.
    (0.95, [0.25, 0.5, 1.0], [0, 0, 60, 0], 0.975),
    (0.95, [0.25, 0.5, 1.0], [60, 0, 0, 0], 0.2375),
    (0.95, [0.1, 0.25, 0.5], [0, 0, 60, 0], 0.4875),
    (0.99, [1.0, 1.28], [0, 60, 0], 1.2772),
    # Rank in the overflow bucket: the largest finite bound.
    (0.99, [0.5, 1.0], [1, 0, 99], 1.0),
    # Empty histogram: no value.
    (0.5, [1.0], [0, 0], None),
])
def test_histogram_quantile_matches_prometheus(q: float, bounds: list[float], counts: list[int],
                                               expected: float | None) -> None:
    """Linear interpolation inside the bucket the rank falls in, like histogram_quantile."""
    value = histogram_quantile(q, bounds, counts)
    assert value == (None if expected is None else pytest.approx(expected))


def _line(points: list[tuple[int, str, list[int]]], temporality: int = 2) -> str:
    """One OTLP JSON metrics request with pool-job histogram points (time, service instance, counts)."""
    resource_metrics = []
    for time_ns, instance, counts in points:
        resource_metrics.append({
            "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "svc"}},
                                        {"key": "service.instance.id", "value": {"stringValue": instance}}]},
            "scopeMetrics": [{"scope": {"name": "otel_perf"}, "metrics": [{
                "name": "otel_perf.pool.job.duration", "unit": "s",
                "histogram": {"aggregationTemporality": temporality, "dataPoints": [{
                    "timeUnixNano": str(time_ns), "count": str(sum(counts)), "sum": 1.0,
                    "bucketCounts": [str(c) for c in counts], "explicitBounds": [0.1, 0.5, 1.0]}]},
            }]}],
        })
    return json.dumps({"resourceMetrics": resource_metrics})


def test_cumulative_series_take_their_latest_point_and_processes_are_merged(tmp_path: Path) -> None:
    """Two processes, each exported twice: the latest point of each counts, then the two are added."""
    (tmp_path / "metrics.jsonl").write_text("\n".join([
        _line([(1_000_000_000, "a", [10, 0, 0, 0]), (1_000_000_000, "b", [0, 0, 0, 0])]),
        _line([(2_000_000_000, "a", [20, 0, 0, 0]), (2_000_000_000, "b", [0, 0, 5, 0])]),
    ]) + "\n")
    report = build_report([tmp_path], DEFAULT_OBJECTIVES)
    result = report.results[0]
    assert result.samples == 25
    # rank 23.75 of 25: bucket (0.5, 1.0] holds ranks 20-25.
    assert result.value == pytest.approx(0.5 + 0.5 * (3.75 / 5))
    assert result.status == "MISS"


def test_delta_points_are_added_up(tmp_path: Path) -> None:
    """Delta temporality: every point is an increment, so all of them count."""
    (tmp_path / "metrics.jsonl").write_text("\n".join([
        _line([(1_000_000_000, "a", [10, 0, 0, 0])], temporality=1),
        _line([(2_000_000_000, "a", [10, 0, 0, 0])], temporality=1),
    ]) + "\n")
    result = build_report([tmp_path], DEFAULT_OBJECTIVES).results[0]
    assert result.samples == 20
    assert result.status == "PASS"
    assert "<svg" in render_html(build_report([tmp_path], DEFAULT_OBJECTIVES))


def test_objective_metrics_are_in_the_catalogue() -> None:
    """Each objective is measured by metrics otel-perf emits (the catalogue in _semconv)."""
    for objective in DEFAULT_OBJECTIVES:
        for name in objective.metrics:
            assert name in sc.METRICS_BY_NAME


def test_load_objectives_rejects_bad_files(tmp_path: Path) -> None:
    """Unreadable TOML and non-positive thresholds raise ConfigError naming the problem."""
    bad = tmp_path / "bad.toml"
    bad.write_text("[objectives\n")
    with pytest.raises(ConfigError, match="TOML"):
        load_objectives(bad)
    bad.write_text("[objectives]\ngc_pause = -1\n")
    with pytest.raises(ConfigError, match="gc_pause"):
        load_objectives(bad)
    good = tmp_path / "good.toml"
    good.write_text("[objectives]\ngc_pause = 0.02\n[objectives.threads_peak]\nthreshold = 500\n")
    by_key = {o.key: o for o in load_objectives(good)}
    assert by_key["gc_pause"].threshold == 0.02
    assert by_key["threads_peak"].threshold == 500
    assert by_key["command_p95"].threshold == 0.5


# --- duplicated input, broken input, explanations --------------------------------------------------------

def _cpu_line(time_ns: int, user: float, system: float, instance: str = "a") -> str:
    """One OTLP JSON metrics request with a process.cpu.utilization collection (user and system)."""
    points = [{"timeUnixNano": str(time_ns), "asDouble": value,
               "attributes": [{"key": "cpu.mode", "value": {"stringValue": mode}}]}
              for mode, value in (("user", user), ("system", system))]
    return json.dumps({"resourceMetrics": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "svc"}},
                                    {"key": "service.instance.id", "value": {"stringValue": instance}}]},
        "scopeMetrics": [{"scope": {"name": "otel_perf"}, "metrics": [{
            "name": "process.cpu.utilization", "unit": "1", "gauge": {"dataPoints": points}}]}]}]})


def _objectives_json(paths: list[Path]) -> list[dict[str, object]]:
    done = _report("--format", "json", *map(str, paths))
    assert done.returncode in (0, 1), done.stderr
    return json.loads(done.stdout)["objectives"]  # type: ignore[no-any-return]


def test_points_delivered_twice_count_once(tmp_path: Path) -> None:
    """Durable export may deliver a batch twice after a crash: the CPU average of 46 % stays 46 % (it read
    92 %, a MISS) and a delta histogram's 20 jobs stay 20."""
    lines = [_cpu_line(t * 1_000_000_000, 0.30, 0.16) for t in (1, 2, 3)]
    lines += [_line([(t * 1_000_000_000, "a", [10, 0, 0, 0])], temporality=1) for t in (1, 2)]
    once, twice = tmp_path / "once", tmp_path / "twice"
    once.mkdir()
    twice.mkdir()
    (once / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    (twice / "metrics-1.jsonl").write_text("\n".join(lines) + "\n")
    (twice / "metrics-2.jsonl").write_text("\n".join(lines[1:] + lines[:1]) + "\n")  # replayed out of order
    by_key = {o.key: r for o, r in zip(DEFAULT_OBJECTIVES, build_report([twice], DEFAULT_OBJECTIVES).results,
                                         strict=True)}
    assert by_key["cpu_average"].value == pytest.approx(0.46)
    assert by_key["cpu_average"].status == "PASS"
    assert by_key["command_p95"].samples == 20
    assert _objectives_json([twice]) == _objectives_json([once])


def test_two_instruments_of_one_name_both_count(tmp_path: Path) -> None:
    """Points alike in everything but their values are two measurements (two instruments of one name on
    one meter export both, at the same timestamp), not a duplicate: the larger peak counts."""
    for order in ((100, 300), (300, 100)):
        (tmp_path / "metrics.jsonl").write_text("".join(
            _gauge_line("otel_perf.process_tree.memory.peak", "By", mib * 2**20) + "\n" for mib in order))
        by_key = {r.objective.key: r for r in build_report([tmp_path], DEFAULT_OBJECTIVES).results}
        assert by_key["system_memory"].value == 300 * 2**20


@pytest.mark.e2e
def test_report_over_doubled_real_run_equals_the_original(runs: dict[str, Path], tmp_path: Path) -> None:
    """Every file of a real run delivered a second time (as a replaying spool would): the same table."""
    doubled = tmp_path / "doubled"
    shutil.copytree(runs["bad"], doubled / "first")
    shutil.copytree(runs["bad"], doubled / "replayed")
    assert _objectives_json([doubled]) == _objectives_json([runs["bad"]])


@pytest.mark.parametrize("content", [
    '{"resourceMetrics": 5}',
    '{"resourceMetrics": [5]}',
    '[1, 2]',
    '{"resourceMetrics": [{"scopeMetrics": [{"metrics": [{"name": "x", "gauge": {"dataPoints": '
    '[{"timeUnixNano": "soon", "asDouble": 1}]}}]}]}]}',
    '[' * 100_000 + ']' * 100_000,
], ids=["not-a-list", "not-an-object", "array", "bad-timestamp", "deep-nesting"])
def test_valid_json_of_the_wrong_shape_exits_2_naming_file_and_line(tmp_path: Path, content: str) -> None:
    """Exit status 1 means "objective missed" to a CI gate: a broken input must not look like one."""
    good = _cpu_line(1_000_000_000, 0.1, 0.1)
    (tmp_path / "metrics.jsonl").write_text(f"{good}\n{content}\n")
    done = _report(str(tmp_path))
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"{tmp_path / 'metrics.jsonl'} line 2: not an OTLP metrics export request" in done.stderr
    assert "Traceback" not in done.stderr


def _gauge_line(name: str, unit: str, value: float, attributes: dict[str, object] | None = None,
                time_ns: int = 1_000_000_000) -> str:
    attrs = [{"key": k, "value": {"intValue": str(v)} if isinstance(v, int) else {"stringValue": str(v)}}
             for k, v in (attributes or {}).items()]
    return json.dumps({"resourceMetrics": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "svc"}}]},
        "scopeMetrics": [{"scope": {"name": "otel_perf"}, "metrics": [{
            "name": name, "unit": unit,
            "gauge": {"dataPoints": [{"timeUnixNano": str(time_ns), "asDouble": value, "attributes": attrs}]}}]}]}]})


@pytest.mark.parametrize(("generation", "first", "expected", "advice"), [
    (2, False, "full collection (generation 2).", "call gc.freeze() once start-up"),
    (2, True, "full collection (generation 2) at start-up", "gc.freeze() cannot avoid"),
    (0, False, "young collection (generation 0).", "oversubscribed"),
], ids=["full", "full-at-start-up", "young"])
def test_a_missed_gc_objective_says_which_collections_and_what_to_do(
    tmp_path: Path, generation: int, first: bool, expected: str, advice: str
) -> None:
    """The GC-pause miss names the generation of the longest pause, whether it came at start-up (the
    process's first export), and the next step for that case."""
    at = 1_000_000_000 if first else 2_000_000_000
    (tmp_path / "metrics.jsonl").write_text(
        _gauge_line("otel_perf.gc.pause.max", "s", 0.003, {"cpython.gc.generation": 1}, 1_000_000_000) + "\n"
        + _gauge_line("otel_perf.gc.pause.max", "s", 0.002, {"cpython.gc.generation": 1}, 2_000_000_000) + "\n"
        + _gauge_line("otel_perf.gc.pause.max", "s", 0.031, {"cpython.gc.generation": generation}, at) + "\n")
    done = _report(str(tmp_path))
    assert done.returncode == 1
    assert f"GC pause: The longest pause (31 ms in svc) was a {expected}" in " ".join(done.stdout.split())
    assert advice in " ".join(done.stdout.split())
    document = json.loads(_report("--format", "json", str(tmp_path)).stdout)
    (gc_pause,) = [o for o in document["objectives"] if o["key"] == "gc_pause"]
    assert expected in gc_pause["explanation"]
    assert all(o["explanation"] is None for o in document["objectives"] if o["key"] != "gc_pause")


@pytest.mark.e2e
def test_every_miss_of_a_real_run_is_explained(runs: dict[str, Path], tmp_path: Path) -> None:
    """The slow run's command miss names its slowest pool; with every threshold tiny, each objective that
    has data misses and each miss gets its own explanation, in text, Markdown, JSON and HTML."""
    done = _report(str(runs["bad"]))
    assert "command processing p95: Pool 'commands' is the slowest" in " ".join(done.stdout.split())
    tiny = tmp_path / "tiny.toml"
    tiny.write_text("[objectives]\n" + "".join(f"{o.key} = 1e-9\n" for o in DEFAULT_OBJECTIVES))
    document = json.loads(_report("--objectives", str(tiny), "--format", "json", str(runs["bad"])).stdout)
    missed = [o for o in document["objectives"] if o["status"] == "MISS"]
    assert len(missed) >= 5
    explanations = [o["explanation"] for o in missed]
    assert all(explanations) and len(set(explanations)) == len(explanations)
    markdown = _report("--objectives", str(tiny), "--format", "markdown", str(runs["bad"])).stdout
    page = tmp_path / "page.html"
    _report("--objectives", str(tiny), "--html", str(page), str(runs["bad"]))
    for objective in missed:
        assert f"- **{objective['title']}**: " in markdown
        assert f"<li><strong>{objective['title']}</strong>: " in page.read_text()


# --- the HTML report's charts ----------------------------------------------------------------------------

def _run_within_the_objectives(directory: Path) -> Path:
    """Files of a run well within every threshold: a GC pause of 1-3 ms against 10 ms, 12 threads against
    1000, 20-40 % CPU against 70 %... the values that lay flat at the bottom of a chart scaled to 1.1x the
    threshold."""
    directory.mkdir()
    lines = []
    for second in range(1, 9):
        t = second * 1_000_000_000
        lines.append(_gauge_line("otel_perf.gc.pause.max", "s", 0.001 + 0.00025 * (second % 5),
                                 {"cpython.gc.generation": 0}, t))
        lines.append(_gauge_line("otel_perf.thread.peak", "{thread}", 10 + second % 4, None, t))
        lines.append(_gauge_line("otel_perf.memory.peak", "By", (40 + 3 * second) * 2**20, None, t))
        lines.append(_gauge_line("otel_perf.process_tree.memory.peak", "By", (60 + 5 * second) * 2**20, None, t))
        lines.append(_cpu_line(t, 0.1 + 0.02 * (second % 3), 0.05))
        lines.append(_line([(t, "a", [10 * second, 2 * second, 0, 0])]))
    (directory / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return directory


def _svg_geometry(svg: str) -> tuple[float, float, list[float], dict[str, tuple[float, float]]]:
    """(plot top, plot bottom, the line's y values, (x, y) of each text by its content) of one chart."""
    import xml.etree.ElementTree as ET

    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    rect = root.find(f"{ns}rect")
    assert rect is not None
    top = float(rect.get("y", 0))
    bottom = top + float(rect.get("height", 0))
    line = root.find(f"{ns}polyline")
    ys = [float(pair.split(",")[1]) for pair in line.get("points", "").split()] if line is not None else []
    texts = {text.text or "": (float(text.get("x", 0)), float(text.get("y", 0))) for text in root.iter(f"{ns}text")}
    return top, bottom, ys, texts


def test_charts_scale_to_the_data_and_keep_labels_apart(tmp_path: Path) -> None:
    """Each line reaches the upper half of its chart; a threshold far above the data is named in a note,
    one near it is drawn, and its label stays inside the chart at the right, away from the axis labels."""
    import re

    from otel_perf.report import _svg_chart

    report = build_report([_run_within_the_objectives(tmp_path / "run")], DEFAULT_OBJECTIVES)
    page = render_html(report)
    charts = re.findall(r"<svg.*?</svg>", page)
    assert len(charts) == len(DEFAULT_OBJECTIVES) - 1 + len(report.context)  # tools: no data
    for svg in charts:
        top, bottom, ys, _ = _svg_geometry(svg)
        assert min(ys) <= (top + bottom) / 2, svg  # the highest value is in the upper half
    gc_chart = next(svg for svg in charts if "GC pause" in svg)
    assert "objective &lt; 10 ms, above the chart" in gc_chart
    memory_chart = next(svg for svg in charts if "system total memory" in svg)
    assert ">120 MiB<" in memory_chart  # a round top in the unit shown (the data peaks at 100 MiB)
    for values, top_label in (([0.55, 0.6, 0.62], "80 %"), ([0.5, 0.7], "80 %"), ([0.65, 0.5], "80 %")):
        svg = _svg_chart(list(enumerate(values)), "1", 0.7, "CPU")  # the threshold is near: drawn
        top, bottom, ys, texts = _svg_geometry(svg)
        assert 'stroke-dasharray="4 3"' in svg and min(ys) <= (top + bottom) / 2
        threshold_x, threshold_y = texts["< 70 %"]
        axis_x, _ = texts[top_label]
        assert axis_x <= 70 < 400 <= threshold_x  # axis labels left of the plot, the threshold's at its right
        assert top <= threshold_y - 9 and threshold_y <= bottom  # the whole label inside the plot
    # The threshold on the top of the axis is drawn, not called "above the chart".
    svg = _svg_chart([(1, 0.38), (2, 0.38)], "s", 0.5, "command p95")
    assert 'stroke-dasharray="4 3"' in svg and "above the chart" not in svg


def _bluish(pixel: tuple[int, int, int]) -> bool:
    """The line's colour (#2c7be5), also where anti-aliasing blends it with the plot's fill."""
    red, _, blue = pixel
    return blue - red > 60 and blue > 180


@pytest.mark.e2e
def test_html_report_lines_use_half_the_chart_in_chromium(tmp_path: Path) -> None:
    """Rendered by headless Chromium, every chart's line reaches into the upper half of its plot area."""
    from tests.conftest import require_binary
    from tests.helpers.png import read_png

    chromium = require_binary("chromium", "chromium")
    page = tmp_path / "report.html"
    assert _report("--html", str(page), str(_run_within_the_objectives(tmp_path / "run"))).returncode == 0
    shot = tmp_path / "report.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars", "--force-device-scale-factor=1",
                    "--window-size=1200,1400", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120, check=False)
    image = read_png(shot)
    plot = (250, 250, 250)  # the plot area's fill, #fafafa
    bands: list[list[int]] = []  # rows of each horizontal band of charts
    for y in range(image.height):
        if sum(image.pixel(x, y) == plot for x in range(0, image.width, 4)) >= 80:
            if bands and bands[-1][-1] >= y - 4:  # a horizontal line crossing the fill: the same band
                bands[-1].append(y)
            else:
                bands.append([y])
    charts = 0
    for rows in bands:
        middle = rows[len(rows) // 2]
        columns = [x for x in range(image.width) if image.pixel(x, middle) == plot]
        runs: list[list[int]] = []
        for x in columns:
            if runs and x - runs[-1][-1] <= 30:  # the line crosses the fill: still the same plot
                runs[-1].append(x)
            else:
                runs.append([x])
        for xs in (r for r in runs if r[-1] - r[0] > 300):
            charts += 1
            top, bottom = rows[0], rows[-1]
            blue = [y for y in range(top, bottom + 1) for x in range(xs[0], xs[-1] + 1)
                    if _bluish(image.pixel(x, y))]
            assert blue, f"no line in the chart at x={xs[0]}, y={top}"
            assert min(blue) <= (top + bottom) / 2, f"the line stays in the lower half of the chart at y={top}"
    assert charts >= 6, charts  # the six objectives with data (and the context charts) were on screen
