"""``otel-perf report``: check a run's OTLP JSON lines files against the performance objectives.

Why this module exists: the plan's success metrics must be checkable without a backend, after any run that
wrote files (``otel-perf run``, ``otel-perf demo``), and in CI, where a missed objective must fail the job.
The same objectives (``_objectives``) drive the Prometheus alerts in ``deploy/``, and quantiles are computed
the way Prometheus' ``histogram_quantile`` computes them, so the report and the alerts agree on a run.

How values are measured:

- Histograms are cumulative: the latest point of each series (per resource, scope and attribute set) holds
  the whole run; the series are merged by adding bucket counts, and p95/p99 are interpolated linearly
  within the bucket the rank falls in (a rank in the overflow bucket yields the largest finite bound, as in
  Prometheus). Delta points are summed instead.
- ``max`` objectives take the largest value any point reported.
- CPU average sums ``user`` and ``system`` utilisation per collection, averages that over the run per
  process, and reports the busiest process.

Output: ``--format text|markdown|json``, and ``--html FILE`` for a self-contained page with small inline SVG
charts of each objective's metric over the run (the plan's weekly report). Exit status: 0 when no objective
is missed (objectives without data do not fail), 1 when one is missed, 2 when the input cannot be read.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from otel_perf._objectives import Objective, load_objectives
from otel_perf._otlpjson import MetricPoint, metric_points
from otel_perf.exporters.files import iter_requests

__all__ = [
    "Report",
    "Result",
    "add_arguments",
    "build_report",
    "histogram_quantile",
    "render_html",
    "render_json",
    "render_markdown",
    "render_text",
    "run",
]

Status = Literal["PASS", "MISS", "NO DATA"]

_CUMULATIVE = 2
_DELTA = 1
_CPU_MODES = ("user", "system")
# Charted in the HTML report besides the objectives, when the run has them: name -> unit.
_CONTEXT_METRICS = {
    "otel_perf.pool.queue.depth": "{job}",
    "otel_perf.pool.worker.busy": "{worker}",
    "otel_perf.memory.pressure": "1",
    "process.memory.usage": "By",
    "otel_perf.asyncio.task.count": "{task}",
}
_SeriesKey = tuple[Any, ...]


@dataclass
class Result:
    """One objective's outcome."""

    objective: Objective
    value: float | None
    metric: str | None
    points: list[tuple[int, float]] = field(default_factory=list)
    samples: int | None = None  # measurements behind a quantile (histograms only)

    @property
    def status(self) -> Status:
        if self.value is None:
            return "NO DATA"
        return "PASS" if self.value < self.objective.threshold else "MISS"


@dataclass
class Report:
    """The objectives report of one set of files."""

    source: str
    files: int
    services: list[str]
    start: int | None
    end: int | None
    results: list[Result]
    context: dict[str, list[tuple[int, float]]] = field(default_factory=dict)

    @property
    def missed(self) -> list[Result]:
        return [r for r in self.results if r.status == "MISS"]


# --- quantiles -------------------------------------------------------------------------------------------

def histogram_quantile(q: float, bounds: Sequence[float], counts: Sequence[int]) -> float | None:
    """The ``q`` quantile of an explicit-bucket histogram, as Prometheus' ``histogram_quantile`` gives it.

    Args:
        q: The quantile, 0 to 1.
        bounds: The explicit upper bounds (``le``), ascending; the overflow bucket is implied.
        counts: Per-bucket (not cumulative) counts, ``len(bounds) + 1`` of them.

    Returns:
        The interpolated value, or None for an empty histogram.
    """
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    cumulative = 0.0
    for index, bound in enumerate(bounds):
        previous = cumulative
        cumulative += counts[index]
        if cumulative >= rank:
            if index == 0 and bound <= 0:
                return bound
            start = 0.0 if index == 0 else bounds[index - 1]
            in_bucket = cumulative - previous
            if in_bucket <= 0:
                return start
            return start + (bound - start) * ((rank - previous) / in_bucket)
    # The rank falls in the overflow bucket: Prometheus answers with the largest finite bound.
    return bounds[-1] if bounds else None


def _merge(points: Iterable[MetricPoint]) -> tuple[list[float], list[int]] | None:
    """Add up histogram points that share the most common set of bounds."""
    by_bounds: dict[tuple[float, ...], list[int]] = {}
    for point in points:
        bounds = tuple(point.explicit_bounds)
        if len(point.bucket_counts) != len(bounds) + 1:
            continue
        merged = by_bounds.setdefault(bounds, [0] * (len(bounds) + 1))
        for index, count in enumerate(point.bucket_counts):
            merged[index] += count
    if not by_bounds:
        return None
    bounds, counts = max(by_bounds.items(), key=lambda item: sum(item[1]))
    return list(bounds), counts


def _series_key(point: MetricPoint) -> _SeriesKey:
    return (
        tuple(sorted((k, repr(v)) for k, v in point.resource.items())),
        point.scope,
        tuple(sorted((k, repr(v)) for k, v in point.attributes.items())),
    )


def _resource_key(point: MetricPoint) -> _SeriesKey:
    return tuple(sorted((k, repr(v)) for k, v in point.resource.items()))


def _by_series(points: Iterable[MetricPoint]) -> dict[_SeriesKey, list[MetricPoint]]:
    series: dict[_SeriesKey, list[MetricPoint]] = defaultdict(list)
    for point in points:
        series[_series_key(point)].append(point)
    for members in series.values():
        members.sort(key=lambda p: p.time)
    return series


def _histogram_run(points: list[MetricPoint]) -> list[MetricPoint]:
    """The points that together hold the whole run: the latest cumulative point of each series, or every
    delta point."""
    run: list[MetricPoint] = []
    for members in _by_series(points).values():
        if members[-1].temporality == _DELTA:
            run.extend(members)
        else:
            run.append(members[-1])
    return run


def _histogram_intervals(points: list[MetricPoint]) -> list[MetricPoint]:
    """Per-collection increments of every series (cumulative points differenced), for charts."""
    increments: list[MetricPoint] = []
    for members in _by_series(points).values():
        previous: MetricPoint | None = None
        for point in members:
            # A delta point is its own increment; so is the first point, one after a change of bounds and
            # one after a reset (the count went down: the series started again).
            if (point.temporality == _DELTA or previous is None
                    or previous.explicit_bounds != point.explicit_bounds
                    or len(previous.bucket_counts) != len(point.bucket_counts)
                    or (point.count or 0) < (previous.count or 0)):
                delta = point
            else:
                delta = MetricPoint(
                    point.name, point.unit, point.type, point.attributes, point.resource, point.scope,
                    point.time,
                    bucket_counts=[a - b for a, b in zip(point.bucket_counts, previous.bucket_counts,
                                                         strict=True)],
                    explicit_bounds=point.explicit_bounds,
                )
            increments.append(delta)
            previous = point
    return increments


# --- measuring -------------------------------------------------------------------------------------------

def _second(time_ns: int) -> int:
    return time_ns // 1_000_000_000 * 1_000_000_000


def _measure_quantile(objective: Objective, points: list[MetricPoint]) -> Result:
    q = 0.95 if objective.statistic == "p95" else 0.99
    name = objective.metrics[0]
    hist = [p for p in points if p.type == "histogram"]
    merged = _merge(_histogram_run(hist))
    value = histogram_quantile(q, *merged) if merged else None
    by_time: dict[int, list[MetricPoint]] = defaultdict(list)
    for delta in _histogram_intervals(hist):
        by_time[_second(delta.time)].append(delta)
    chart = []
    for time_ns in sorted(by_time):
        interval = _merge(by_time[time_ns])
        interval_value = histogram_quantile(q, *interval) if interval else None
        if interval_value is not None:
            chart.append((time_ns, interval_value))
    return Result(objective, value, name if value is not None else None, chart,
                  sum(merged[1]) if merged else None)


def _measure_max(objective: Objective, points_by_name: dict[str, list[MetricPoint]]) -> Result:
    used: list[str] = []
    values: list[MetricPoint] = []
    for name in objective.metrics:
        found = [p for p in points_by_name.get(name, []) if p.value is not None]
        if not found:
            continue
        used.append(name)
        values.extend(found)
        if objective.fallback:
            break
    if not values:
        return Result(objective, None, None)
    by_time: dict[int, float] = {}
    for point in values:
        key = _second(point.time)
        by_time[key] = max(by_time.get(key, -math.inf), float(point.value or 0.0))
    return Result(objective, max(by_time.values()), ", ".join(used), sorted(by_time.items()))


def _measure_cpu(objective: Objective, points: list[MetricPoint]) -> Result:
    per_collection: dict[_SeriesKey, dict[int, float]] = defaultdict(lambda: defaultdict(float))
    for point in points:
        if point.value is None or point.attributes.get("cpu.mode", "user") not in _CPU_MODES:
            continue
        per_collection[_resource_key(point)][point.time] += float(point.value)
    if not per_collection:
        return Result(objective, None, None)
    averages = [sum(samples.values()) / len(samples) for samples in per_collection.values()]
    chart: dict[int, float] = {}
    for samples in per_collection.values():
        for time_ns, value in samples.items():
            key = _second(time_ns)
            chart[key] = max(chart.get(key, 0.0), value)
    return Result(objective, max(averages), objective.metrics[0], sorted(chart.items()))


def build_report(paths: Sequence[str | Path], objectives: Sequence[Objective]) -> Report:
    """Read every OTLP JSON lines file under ``paths`` and measure ``objectives``.

    Raises:
        FileNotFoundError: when a path does not exist or holds no ``*.jsonl`` file.
        ValueError: when a file is not UTF-8 text.
    """
    wanted = {name for objective in objectives for name in objective.metrics} | set(_CONTEXT_METRICS)
    points_by_name: dict[str, list[MetricPoint]] = defaultdict(list)
    files: set[Path] = set()
    services: set[str] = set()
    start: int | None = None
    end: int | None = None
    for path in paths:
        root = Path(path)
        if not root.exists():
            raise FileNotFoundError(f"{path}: no such file or directory")
        if root.is_dir() and not any(root.rglob("*.jsonl")):
            raise FileNotFoundError(f"{path}: no OTLP JSON lines (*.jsonl) files in it")
        try:
            for file, request in iter_requests(root):
                files.add(file)
                for point in metric_points(request):
                    service = point.resource.get("service.name")
                    if service:
                        services.add(str(service))
                    if point.time:
                        start = point.time if start is None else min(start, point.time)
                        end = point.time if end is None else max(end, point.time)
                    if point.name in wanted:
                        points_by_name[point.name].append(point)
        except UnicodeDecodeError as exc:
            raise ValueError(f"{path}: a file is not OTLP JSON lines (not UTF-8 text: {exc.reason})") from exc
    results = []
    for objective in objectives:
        if objective.statistic in ("p95", "p99"):
            results.append(_measure_quantile(objective, points_by_name.get(objective.metrics[0], [])))
        elif objective.statistic == "avg":
            results.append(_measure_cpu(objective, points_by_name.get(objective.metrics[0], [])))
        else:
            results.append(_measure_max(objective, points_by_name))
    context = {}
    for name in _CONTEXT_METRICS:
        by_time: dict[int, float] = {}
        for point in points_by_name.get(name, []):
            if point.value is not None:
                key = _second(point.time)
                by_time[key] = max(by_time.get(key, -math.inf), float(point.value))
        if by_time:
            context[name] = sorted(by_time.items())
    source = ", ".join(str(p) for p in paths)
    return Report(source, len(files), sorted(services), start, end, results, context)


# --- rendering -------------------------------------------------------------------------------------------

def _format(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value * 1000:.4g} ms" if value < 1 else f"{value:.4g} s"
    if unit == "By":
        return f"{value / 2**30:.4g} GiB" if value >= 2**30 else f"{value / 2**20:.4g} MiB"
    if unit == "1":
        return f"{value * 100:.4g} %"
    return f"{value:.0f}"


def _time(time_ns: int | None) -> str:
    if time_ns is None:
        return "-"
    return datetime.fromtimestamp(time_ns / 1e9, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _rows(report: Report) -> list[tuple[str, str, str, str, str]]:
    return [
        (r.objective.title, r.metric or ", ".join(r.objective.metrics),
         "-" if r.value is None else _format(r.value, r.objective.unit),
         "< " + _format(r.objective.threshold, r.objective.unit), r.status)
        for r in report.results
    ]


def _summary(report: Report) -> str:
    missed = report.missed
    no_data = sum(r.status == "NO DATA" for r in report.results)
    tail = f" ({no_data} without data)" if no_data else ""
    if missed:
        return f"{len(missed)} objective(s) missed: {', '.join(r.objective.title for r in missed)}{tail}."
    return f"All objectives with data met{tail}."


def _header(report: Report) -> str:
    return (f"{report.source}: {report.files} file(s), services: {', '.join(report.services) or '-'}, "
            f"{_time(report.start)} to {_time(report.end)} UTC")


_HEADINGS = ("objective", "measured by", "measured", "threshold", "result")


def render_text(report: Report) -> str:
    """A plain-text table."""
    rows = [_HEADINGS, *_rows(report)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_HEADINGS))]
    lines = [f"otel-perf objectives report: {_header(report)}", ""]
    lines += ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
    lines += ["", _summary(report)]
    return "\n".join(lines) + "\n"


def render_markdown(report: Report) -> str:
    """A Markdown table, e.g. for a CI job summary."""
    lines = ["## otel-perf objectives", "", _header(report), "", "| " + " | ".join(_HEADINGS) + " |",
             "|" + "---|" * len(_HEADINGS)]
    for row in _rows(report):
        status = row[4] if row[4] != "MISS" else "**MISS**"
        lines.append("| " + " | ".join([*row[:4], status]) + " |")
    lines += ["", _summary(report)]
    return "\n".join(lines) + "\n"


def render_json(report: Report) -> str:
    """Machine-readable: every objective with its raw measured value and threshold."""
    document = {
        "source": report.source,
        "files": report.files,
        "services": report.services,
        "start_unix_nano": report.start,
        "end_unix_nano": report.end,
        "objectives": [
            {"key": r.objective.key, "title": r.objective.title, "metric": r.metric,
             "statistic": r.objective.statistic, "measured": r.value, "threshold": r.objective.threshold,
             "unit": r.objective.unit, "status": r.status, "samples": r.samples}
            for r in report.results
        ],
        "missed": [r.objective.key for r in report.missed],
    }
    return json.dumps(document, indent=2) + "\n"


def _svg_chart(points: list[tuple[int, float]], unit: str, threshold: float | None, title: str,
               missed: bool = False, width: int = 520, height: int = 140) -> str:
    """A small line chart of ``points`` (time in ns, value), with the threshold as a dashed line; plain SVG,
    nothing fetched."""
    if not points:
        return '<p class="nodata">no data over time</p>'
    left, right, top, bottom = 70, 10, 10, 22
    times = [t for t, _ in points]
    values = [v for _, v in points]
    t0, t1 = min(times), max(times)
    y_max = max(*values, threshold or 0.0) * 1.1 or 1.0
    span_t = (t1 - t0) or 1

    def x(t: int) -> float:
        return left + (width - left - right) * (t - t0) / span_t

    def y(v: float) -> float:
        return top + (height - top - bottom) * (1 - v / y_max)

    color = "#c0392b" if missed else "#2c7be5"
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="{html.escape(title)} over the run">',
        f'<rect x="{left}" y="{top}" width="{width - left - right}" height="{height - top - bottom}" '
        'fill="#fafafa" stroke="#ddd"/>',
        f'<text x="{left - 4}" y="{top + 8}" text-anchor="end" font-size="10">'
        f'{html.escape(_format(y_max, unit))}</text>',
        f'<text x="{left - 4}" y="{height - bottom + 4}" text-anchor="end" font-size="10">0</text>',
        f'<text x="{left}" y="{height - 6}" font-size="10">{_time(t0)}</text>',
        f'<text x="{width - right}" y="{height - 6}" text-anchor="end" font-size="10">{_time(t1)}</text>',
    ]
    if threshold is not None:
        threshold_y = y(threshold)
        parts += [
            f'<line x1="{left}" y1="{threshold_y:.1f}" x2="{width - right}" y2="{threshold_y:.1f}" '
            'stroke="#c0392b" stroke-dasharray="4 3"/>',
            f'<text x="{left - 4}" y="{threshold_y + 4:.1f}" text-anchor="end" font-size="10" fill="#c0392b">'
            f'{html.escape(_format(threshold, unit))}</text>',
        ]
    if len(points) == 1:
        parts.append(f'<circle cx="{x(times[0]):.1f}" cy="{y(values[0]):.1f}" r="3" fill="{color}"/>')
    else:
        line = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in points)
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{line}"/>')
    parts.append("</svg>")
    return "".join(parts)


def _objective_chart(result: Result) -> str:
    objective = result.objective
    return _svg_chart(result.points, objective.unit, objective.threshold, objective.title,
                      missed=result.status == "MISS")


_CSS = """
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin-bottom: 2em; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: left; }
td.PASS { color: #1e7e34; font-weight: bold; } td.MISS { color: #c0392b; font-weight: bold; }
td.NODATA { color: #888; } .chart { display: inline-block; margin: 0 2em 1.5em 0; vertical-align: top; }
.chart h3 { font-size: 0.95em; margin: 0 0 4px 0; } .nodata { color: #888; }
"""


def render_html(report: Report) -> str:
    """A self-contained HTML page: the objectives table and one inline SVG chart per objective."""
    esc = html.escape
    rows = "".join(
        "<tr>" + "".join(f"<td>{esc(cell)}</td>" for cell in row[:4])
        + f'<td class="{row[4].replace(" ", "")}">{esc(row[4])}</td></tr>'
        for row in _rows(report)
    )
    charts = "".join(
        f'<div class="chart"><h3>{esc(r.objective.title)} ({esc(r.metric or r.objective.metrics[0])}, '
        f'{esc(r.objective.statistic)} per collection)</h3>'
        f"{_objective_chart(r)}</div>"
        for r in report.results
    )
    context = "".join(
        f'<div class="chart"><h3>{esc(name)} (largest value per collection)</h3>'
        f"{_svg_chart(points, _CONTEXT_METRICS[name], None, name)}</div>"
        for name, points in report.context.items()
    )
    if context:
        charts += f"<h2>Context</h2>{context}"
    head = "".join(f"<th>{esc(h)}</th>" for h in _HEADINGS)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>otel-perf report</title><style>{_CSS}</style></head><body>"
        f"<h1>otel-perf objectives report</h1><p>{esc(_header(report))}</p>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
        f"<p><strong>{esc(_summary(report))}</strong></p><h2>Over the run</h2>{charts}"
        "</body></html>\n"
    )


_RENDERERS = {"text": render_text, "markdown": render_markdown, "json": render_json}


# --- command line ----------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``otel-perf report`` arguments to ``parser``."""
    parser.description = ("Check OTLP JSON lines files (or directories of them) against the performance "
                          "objectives; exit 1 when one is missed.")
    parser.add_argument("paths", nargs="+", metavar="PATH", help="an OTLP JSON lines file or a directory")
    parser.add_argument("--format", choices=sorted(_RENDERERS), default="text", help="output format")
    parser.add_argument("--objectives", metavar="FILE.toml",
                        help="thresholds to use instead of the defaults ([objectives] key = value)")
    parser.add_argument("--html", metavar="FILE", help="also write a self-contained HTML report with charts")


def run(args: argparse.Namespace) -> int:
    """Run ``otel-perf report``; returns the exit status."""
    try:
        objectives = load_objectives(args.objectives)
        report = build_report(args.paths, objectives)
    except (OSError, ValueError) as exc:  # ConfigError is a ValueError
        print(f"otel-perf report: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(_RENDERERS[args.format](report))
    if args.html:
        try:
            Path(args.html).write_text(render_html(report), encoding="utf-8")
        except OSError as exc:
            print(f"otel-perf report: cannot write {args.html}: {exc}", file=sys.stderr)
            return 2
    return 1 if report.missed else 0
