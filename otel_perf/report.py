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
- Identical points (same resource, scope, metric, attributes, timestamps and values) count once: durable
  export may deliver a batch twice after a crash, and adding the copies would double sums and averages.

Every missed objective gets a short explanation: what in the run missed it (the slowest pool or tool, the
generation of the longest GC pause, the busiest process...) and what the user can do next.

When the files also hold traces and OTLP profiles (continuous profiling, ``OTEL_PERF_PROFILING``), a
section "slow spans and their hot functions" follows the objectives: for the slowest tool calls, pool
jobs and programs, the functions their profile samples were taken in (``otel_perf.profiling.hotspots``),
and in the HTML report a flame graph of each.

Output: ``--format text|markdown|json``, and ``--html FILE`` for a self-contained page with small inline SVG
charts of each objective's metric over the run (the plan's weekly report). Exit status: 0 when no objective
is missed (objectives without data do not fail), 1 when one is missed, 2 when the input cannot be read or
is not OTLP metrics JSON (the message names the file and line), so a CI gate never takes a broken input for
a missed objective.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import sys
import textwrap
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from otel_perf._objectives import Objective, load_objectives
from otel_perf._otlpjson import MetricPoint, metric_points
from otel_perf._safety import log_once

__all__ = [
    "Report",
    "ReportInputError",
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
    explanation: str | None = None  # for a miss: what missed it, and what to do next

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
    hot_spans: list[Any] = field(default_factory=list)  # otel_perf.profiling.hotspots.HotSpan
    profiles: int = 0  # OTLP profiles in the files

    @property
    def missed(self) -> list[Result]:
        return [r for r in self.results if r.status == "MISS"]


class ReportInputError(ValueError):
    """A line of an input file is not an OTLP metrics export request (exit status 2, naming file and line)."""


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


# --- explaining a miss ------------------------------------------------------------------------------------

#: Read besides the objectives' own metrics, to explain a miss.
_EXPLAINING_METRICS = ("otel_perf.gc.pause.duration",)
_PROFILE = "otel-perf profile http://HOST:PORT"  # the debug server (OTEL_PERF_DEBUG_ADDR) of that process


def _process(resource: dict[str, Any]) -> str:
    name = str(resource.get("service.name") or "unknown service")
    if resource.get("process.pid"):
        return f"{name} (pid {resource['process.pid']})"
    if resource.get("service.instance.id"):
        return f"{name} (instance {str(resource['service.instance.id'])[:8]})"
    return name


def _worst_group(result: Result, points: list[MetricPoint], attribute: str) -> tuple[str, float, int] | None:
    """The value of ``attribute`` whose histograms have the highest quantile: (value, quantile, samples)."""
    q = 0.95 if result.objective.statistic == "p95" else 0.99
    groups: dict[str, list[MetricPoint]] = defaultdict(list)
    for point in _histogram_run([p for p in points if p.type == "histogram"]):
        groups[str(point.attributes.get(attribute, "-"))].append(point)
    worst: tuple[str, float, int] | None = None
    for name, members in groups.items():
        merged = _merge(members)
        value = histogram_quantile(q, *merged) if merged else None
        if merged and value is not None and (worst is None or value > worst[1]):
            worst = (name, value, sum(merged[1]))
    return worst


def _largest(result: Result, points_by_name: dict[str, list[MetricPoint]]) -> MetricPoint | None:
    names = (result.metric or "").split(", ")
    found = [p for name in names for p in points_by_name.get(name, []) if p.value is not None]
    return max(found, key=lambda p: float(p.value or 0.0)) if found else None


def _above(points: list[MetricPoint], threshold: float) -> tuple[int, int]:
    """(values above ``threshold``, all values) in the merged histograms ``points``."""
    merged = _merge(_histogram_run([p for p in points if p.type == "histogram"]))
    if merged is None:
        return 0, 0
    bounds, counts = merged
    above = sum(count for index, count in enumerate(counts) if index > 0 and bounds[index - 1] >= threshold)
    return above, sum(counts)


def _explain_gc(result: Result, points_by_name: dict[str, list[MetricPoint]]) -> str:
    objective = result.objective
    value = _format(result.value or 0.0, objective.unit)
    longest = _largest(result, points_by_name)
    generation = longest.attributes.get("cpython.gc.generation") if longest is not None else None
    where = f" in {_process(longest.resource)}" if longest is not None else ""
    above, total = _above(points_by_name.get("otel_perf.gc.pause.duration", []), objective.threshold)
    share = f"; {above} of {total} pauses took more than {_format(objective.threshold, objective.unit)}" \
        if total else ""
    if generation == 2 and longest is not None and _at_start_up(longest, points_by_name):
        return (f"The longest pause ({value}{where}) was a full collection (generation 2) at start-up, in the "
                f"process's first export interval{share}. Imports build the heap then (the OpenTelemetry stack "
                "alone holds about 40 000 objects): a one-off cost, which gc.freeze() cannot avoid; raising the "
                "thresholds while importing (gc.set_threshold()) makes it rarer.")
    if generation == 2:
        return (f"The longest pause ({value}{where}) was a full collection (generation 2){share}. A full "
                "collection walks every object the program holds: call gc.freeze() once start-up (imports, "
                "configuration) is done, so that later full collections skip that heap, or make them rarer "
                "with gc.set_threshold().")
    if generation in (0, 1):
        return (f"The longest pause ({value}{where}) was a young collection (generation {generation}){share}. "
                "Young collections cost well under a millisecond of CPU: one this long means the collecting "
                "thread lost its CPU while it held the GIL, because the machine's CPUs were oversubscribed "
                "(other programs, or more busy processes than cores). Run with more CPU or fewer processes at "
                "once, and compare; if it stays, look for large containers created and dropped in bursts.")
    return (f"The longest pause was {value}{where}{share}. Full collections (generation 2) are shortened by "
            "gc.freeze() after start-up; long young collections point at CPUs that were oversubscribed.")


def _at_start_up(point: MetricPoint, points_by_name: dict[str, list[MetricPoint]]) -> bool:
    """Whether ``point`` is from its process's first export (its gauge covers the start-up)."""
    same = {p.time for p in points_by_name.get(point.name, []) if p.resource == point.resource}
    return len(same) > 1 and point.time == min(same)


def _explain(result: Result, points_by_name: dict[str, list[MetricPoint]]) -> str:
    """A short, specific explanation of a missed objective, and the next step."""
    objective = result.objective
    unit = objective.unit
    value = _format(result.value or 0.0, unit)
    points = points_by_name.get(objective.metrics[0], [])
    if objective.key == "command_p95":
        worst = _worst_group(result, points, "otel_perf.pool.name")
        where = f"Pool {worst[0]!r} is the slowest: p95 {_format(worst[1], unit)} over {worst[2]} jobs. " \
            if worst else ""
        return (f"{where}Its slowest job spans tell queueing from running: a large otel_perf.job.wait.duration "
                "calls for more workers or fewer submissions, a long run for a CPU profile of the job "
                f"({_PROFILE} --seconds 30).")
    if objective.key == "tool_p99":
        worst = _worst_group(result, points, "gen_ai.tool.name")
        where = f"Tool {worst[0]!r} is the slowest: p99 {_format(worst[1], unit)} over {worst[2]} calls. " \
            if worst else ""
        return (f"{where}Its execute_tool spans show which calls were slow and how they ended (error.type); "
                "give the tool a timeout, cache its results, or run its calls concurrently.")
    if objective.key == "cpu_average":
        busiest = _busiest(points)
        where = f"{_process(busiest[0])} averaged {value} over {busiest[1]} collections. " if busiest else ""
        return (f"{where}A CPU profile of that process shows where the time goes "
                f"({_PROFILE} --seconds 30 --flamegraph cpu.html); otel-perf's own share shows as its frames.")
    if objective.key == "gc_pause":
        return _explain_gc(result, points_by_name)
    largest = _largest(result, points_by_name)
    where = _process(largest.resource) if largest is not None else "a process"
    if objective.key == "worker_memory":
        if largest is not None and largest.name == "otel_perf.pool.worker.memory.max":
            pool = largest.attributes.get("otel_perf.pool.name", "-")
            return (f"A worker of pool {pool!r} in {where} reached {value}. A heap profile of a worker shows what "
                    "it holds; recycling workers (max_tasks_per_child, maxtasksperchild) caps what they "
                    "accumulate.")
        return (f"{where} reached {value} of resident memory. A heap profile ({_PROFILE} --heap --seconds 30) "
                "shows which code allocated what it holds.")
    if objective.key == "system_memory":
        return (f"The process tree of {where} (it and all its descendants) reached {value}. "
                "otel_perf.process_tree.memory.usage over the run shows when; the pool workers' "
                "otel_perf.pool.worker.memory.max and the programs' otel_perf.process.max_rss show which members "
                "were large. Fewer workers or programs at once lower it.")
    if objective.key == "threads_peak":
        return (f"{where} had {value} threads at once. Look for thread pools with a large max_workers and threads "
                f"started per request and never joined; {_PROFILE.split()[-1]}/debug/pprof/threads?debug=1 "
                "lists them with their stacks.")
    return f"The measured value {value} is not below the threshold {_format(objective.threshold, unit)}."


def _busiest(points: list[MetricPoint]) -> tuple[dict[str, Any], int] | None:
    """The resource with the highest average CPU utilisation, and its number of collections."""
    per_collection: dict[_SeriesKey, dict[int, float]] = defaultdict(lambda: defaultdict(float))
    resources: dict[_SeriesKey, dict[str, Any]] = {}
    for point in points:
        if point.value is None or point.attributes.get("cpu.mode", "user") not in _CPU_MODES:
            continue
        key = _resource_key(point)
        resources[key] = point.resource
        per_collection[key][point.time] += float(point.value)
    if not per_collection:
        return None
    key = max(per_collection, key=lambda k: sum(per_collection[k].values()) / len(per_collection[k]))
    return resources[key], len(per_collection[key])


def _requests(root: Path) -> Iterator[tuple[Path, int, Any]]:
    """``(file, line number, request)`` for every line of every ``*.jsonl`` file under ``root``.

    A line that is not JSON (a file cut short by a crash) is skipped with one warning per file; JSON that
    cannot be an export request (nested deeper than any) is a :class:`ReportInputError`.
    """
    files = sorted(root.rglob("*.jsonl")) if root.is_dir() else [root]
    for file in files:
        with open(file, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    request = json.loads(line)
                except json.JSONDecodeError:
                    log_once(("bad-jsonl", str(file)), "otel-perf: %s line %d is not JSON; skipped", file,
                             number)
                    continue
                except RecursionError:
                    raise ReportInputError(f"{file} line {number}: not an OTLP metrics export request "
                                           "(JSON nested too deeply)") from None
                yield file, number, request


def _point_key(point: MetricPoint) -> tuple[Any, ...]:
    """What makes a point the same point: resource, scope, metric, attributes and timestamps, and its
    values too, so that two instruments of one name on one meter (the SDK warns, and exports both) never
    lose a point to each other; a batch delivered twice repeats all of it."""
    return (point.name, point.scope, _items(point.resource), _items(point.attributes), point.start_time,
            point.time, point.value, point.count, point.sum, point.min, point.max, tuple(point.bucket_counts),
            tuple(point.explicit_bounds))


def _items(attributes: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, repr(v)) for k, v in attributes.items()))


def build_report(paths: Sequence[str | Path], objectives: Sequence[Objective]) -> Report:
    """Read every OTLP JSON lines file under ``paths`` and measure ``objectives``.

    Raises:
        FileNotFoundError: when a path does not exist or holds no ``*.jsonl`` file.
        ValueError: when a file is not UTF-8 text.
        ReportInputError: when a line is JSON but not an OTLP metrics export request.
    """
    from otel_perf.profiling.hotspots import ProfileCollector

    collector = ProfileCollector()
    wanted = ({name for objective in objectives for name in objective.metrics} | set(_CONTEXT_METRICS)
              | set(_EXPLAINING_METRICS))
    points_by_name: dict[str, list[MetricPoint]] = defaultdict(list)
    seen: set[tuple[Any, ...]] = set()
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
            for file, number, request in _requests(root):
                files.add(file)
                try:
                    points = metric_points(request)
                except (AttributeError, TypeError, ValueError, KeyError, RecursionError) as exc:
                    raise ReportInputError(f"{file} line {number}: not an OTLP metrics export request "
                                           f"({type(exc).__name__}: {exc})") from None
                try:
                    collector.add(request)
                except (AttributeError, TypeError, ValueError, KeyError, IndexError, RecursionError) as exc:
                    raise ReportInputError(f"{file} line {number}: not an OTLP traces or profiles export "
                                           f"request ({type(exc).__name__}: {exc})") from None
                for point in points:
                    service = point.resource.get("service.name")
                    if service:
                        services.add(str(service))
                    if point.time:
                        start = point.time if start is None else min(start, point.time)
                        end = point.time if end is None else max(end, point.time)
                    if point.name in wanted:
                        identity = _point_key(point)
                        if identity in seen:
                            continue  # the same point delivered twice
                        seen.add(identity)
                        points_by_name[point.name].append(point)
        except UnicodeDecodeError as exc:
            raise ValueError(f"{path}: a file is not OTLP JSON lines (not UTF-8 text: {exc.reason})") from exc
    results = []
    for objective in objectives:
        if objective.statistic in ("p95", "p99"):
            result = _measure_quantile(objective, points_by_name.get(objective.metrics[0], []))
        elif objective.statistic == "avg":
            result = _measure_cpu(objective, points_by_name.get(objective.metrics[0], []))
        else:
            result = _measure_max(objective, points_by_name)
        if result.status == "MISS":
            result.explanation = _explain(result, points_by_name)
        results.append(result)
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
    return Report(source, len(files), sorted(services), start, end, results, context,
                  collector.hot_spans(), collector.profiles)


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


def _explanations(report: Report) -> list[tuple[str, str]]:
    return [(r.objective.title, r.explanation) for r in report.missed if r.explanation]


def render_text(report: Report) -> str:
    """A plain-text table, then why each missed objective was missed and what to do."""
    rows = [_HEADINGS, *_rows(report)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_HEADINGS))]
    lines = [f"otel-perf objectives report: {_header(report)}", ""]
    lines += ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
    lines += ["", _summary(report)]
    for title, explanation in _explanations(report):
        lines += ["", *textwrap.wrap(f"{title}: {explanation}", 100, subsequent_indent="  ")]
    section = _hotspots().text_lines(report.hot_spans, report.profiles)
    if section:
        lines += ["", *section]
    return "\n".join(lines) + "\n"


def render_markdown(report: Report) -> str:
    """A Markdown table, e.g. for a CI job summary, then the explanations of the misses."""
    lines = ["## otel-perf objectives", "", _header(report), "", "| " + " | ".join(_HEADINGS) + " |",
             "|" + "---|" * len(_HEADINGS)]
    for row in _rows(report):
        status = row[4] if row[4] != "MISS" else "**MISS**"
        lines.append("| " + " | ".join([*row[:4], status]) + " |")
    lines += ["", _summary(report)]
    explanations = _explanations(report)
    if explanations:
        lines.append("")
        lines += [f"- **{title}**: {explanation}" for title, explanation in explanations]
    section = _hotspots().markdown_lines(report.hot_spans, report.profiles)
    if section:
        lines += ["", *section]
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
             "unit": r.objective.unit, "status": r.status, "samples": r.samples,
             "explanation": r.explanation}
            for r in report.results
        ],
        "missed": [r.objective.key for r in report.missed],
        "hot_spans": _hotspots().json_section(report.hot_spans, report.profiles),
    }
    return json.dumps(document, indent=2) + "\n"


#: A threshold up to this many times the largest value is drawn inside the chart; one further up would
#: squeeze the line into the bottom of the chart, so it is named in a note instead.
_THRESHOLD_IN_VIEW = 1.3


def _nice_ceiling(value: float) -> float:
    """The smallest round number (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6 or 8 times a power of ten) >= ``value``."""
    if not value > 0 or not math.isfinite(value):
        return 1.0
    base = 10.0 ** math.floor(math.log10(value))
    for step in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if step * base >= value * (1 - 1e-9):
            return step * base
    return 10 * base  # pragma: no cover - the loop ends at 10


def _y_scale(values: list[float], threshold: float | None, unit: str) -> tuple[float, bool]:
    """(top of the y axis, whether the threshold is inside the chart).

    The axis is scaled to the data, so the line uses at least half the chart's height; the threshold
    widens it only when it is close to the data (within ``_THRESHOLD_IN_VIEW``). The top is a round
    number in the unit the labels show (MiB or GiB for bytes).
    """
    top = max(values)
    if threshold is not None and (top <= 0 or threshold <= top * _THRESHOLD_IN_VIEW):
        top = max(top, threshold)
    scale = 1.0
    if unit == "By":
        scale = float(2**30 if top * 1.08 >= 2**30 else 2**20)
    y_max = _nice_ceiling(top * 1.08 / scale) * scale
    return y_max, threshold is not None and threshold <= y_max


def _svg_chart(points: list[tuple[int, float]], unit: str, threshold: float | None, title: str,
               missed: bool = False, width: int = 520, height: int = 140) -> str:
    """A small line chart of ``points`` (time in ns, value), with the threshold as a dashed line when it is
    near the data (else named in a note); plain SVG, nothing fetched."""
    if not points:
        return '<p class="nodata">no data over time</p>'
    left, right, top, bottom = 70, 10, 10, 22
    times = [t for t, _ in points]
    values = [v for _, v in points]
    t0, t1 = min(times), max(times)
    y_max, threshold_shown = _y_scale(values, threshold, unit)
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
        label = html.escape("< " + _format(threshold, unit))
        if threshold_shown:
            threshold_y = y(threshold)
            # The label sits at the right end of the line, inside the chart (above the line, or below it when
            # the line runs along the top): never on the axis labels at the left.
            label_y = threshold_y - 3 if threshold_y - top >= 12 else threshold_y + 11
            parts += [
                f'<line x1="{left}" y1="{threshold_y:.1f}" x2="{width - right}" y2="{threshold_y:.1f}" '
                'stroke="#c0392b" stroke-dasharray="4 3"/>',
                f'<text x="{width - right - 4}" y="{label_y:.1f}" text-anchor="end" font-size="10" '
                f'fill="#c0392b" class="threshold">{label}</text>',
            ]
        else:
            parts.append(f'<text x="{width - right - 4}" y="{top + 11}" text-anchor="end" font-size="10" '
                         f'fill="#c0392b" class="threshold">objective {label}, above the chart</text>')
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
    explained = _explanations(report)
    explanations = ("<ul>" + "".join(f"<li><strong>{esc(title)}</strong>: {esc(text)}</li>"
                                      for title, text in explained) + "</ul>") if explained else ""
    flamegraph = _hotspots().flamegraph
    hot, graphs = _hotspots().html_section(report.hot_spans, report.profiles)
    style = _CSS + (flamegraph.STYLE if graphs else "")
    script = f"<script>{flamegraph.SCRIPT}{flamegraph.EMBED_SCRIPT}</script>" if graphs else ""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>otel-perf report</title><style>{style}</style></head><body>"
        f"<h1>otel-perf objectives report</h1><p>{esc(_header(report))}</p>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
        f"<p><strong>{esc(_summary(report))}</strong></p>{explanations}<h2>Over the run</h2>{charts}"
        f"{hot}{script}</body></html>\n"
    )


def _hotspots() -> Any:
    from otel_perf.profiling import hotspots

    return hotspots


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
