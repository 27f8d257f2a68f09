"""The performance objectives: what is measured, how, and the default thresholds.

Why this module exists: the same objectives drive ``otel-perf report``, the Prometheus recording and alert
rules in ``deploy/prometheus/rules/`` and the Grafana dashboard (``docs/report.md``, "Objectives"). Keeping the table
here, next to the names in ``_semconv``, lets the tests check that the rules and the dashboard use exactly
these thresholds, and lets ``--objectives file.toml`` override them by key.

An objective holds while the measured value stays *below* its threshold.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final, Literal

from otel_perf import _semconv as sc
from otel_perf.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

__all__ = ["DEFAULT_OBJECTIVES", "Objective", "Statistic", "load_objectives", "objectives_from_mapping"]

Statistic = Literal["p95", "p99", "max", "avg"]

MIB: Final = 1024 * 1024
GIB: Final = 1024 * MIB


@dataclass(frozen=True, slots=True)
class Objective:
    """One objective of the plan's success metrics.

    Attributes:
        key: Stable identifier, used in ``--objectives`` files and JSON output.
        title: What the plan calls it.
        metrics: OTel metric names it is measured by; for ``max`` objectives with ``fallback`` set, the
            first metric that has data wins, otherwise the largest value of all of them counts.
        statistic: ``p95``/``p99`` of a histogram, ``max`` of gauges, or ``avg`` (CPU: user + system
            summed per collection, averaged over the run).
        threshold: The value the measurement must stay below.
        unit: UCUM unit of the measured value (``s``, ``By``, ``1``, ``{thread}``).
        record: The Prometheus recording rule that computes it per ``job`` over 5 minutes.
        alert: The Prometheus alert that fires when it is missed.
        fallback: See ``metrics``.
    """

    key: str
    title: str
    metrics: tuple[str, ...]
    statistic: Statistic
    threshold: float
    unit: str
    record: str
    alert: str
    fallback: bool = False


DEFAULT_OBJECTIVES: Final[tuple[Objective, ...]] = (
    Objective("command_p95", "command processing p95", ("otel_perf.pool.job.duration",), "p95", 0.5, "s",
              "job:otel_perf_pool_job_duration_seconds:p95_5m", "OtelPerfCommandLatencyObjectiveMissed"),
    Objective("tool_p99", "tool execution p99", ("gen_ai.execute_tool.duration",), "p99", 1.0, "s",
              "job:gen_ai_execute_tool_duration_seconds:p99_5m", "OtelPerfToolLatencyObjectiveMissed"),
    Objective("worker_memory", "worker peak memory",
              ("otel_perf.pool.worker.memory.max", "otel_perf.memory.peak"), "max", 256 * MIB, "By",
              "job:otel_perf_worker_memory_peak_bytes:max_5m",
              "OtelPerfWorkerMemoryObjectiveMissed", fallback=True),
    Objective("system_memory", "system total memory", ("otel_perf.process_tree.memory.peak",), "max",
              1 * GIB, "By", "job:otel_perf_process_tree_memory_peak_bytes:max_5m",
              "OtelPerfSystemMemoryObjectiveMissed"),
    Objective("gc_pause", "GC pause", ("otel_perf.gc.pause.max",), "max", 0.01, "s",
              "job:otel_perf_gc_pause_max_seconds:max_5m", "OtelPerfGcPauseObjectiveMissed"),
    Objective("cpu_average", "CPU average", ("process.cpu.utilization",), "avg", 0.70, "1",
              "job:otel_perf_process_cpu_utilization:avg_5m", "OtelPerfCpuObjectiveMissed"),
    Objective("threads_peak", "threads peak", ("otel_perf.thread.peak", "process.thread.count"), "max", 1000,
              "{thread}", "job:otel_perf_threads:max_5m", "OtelPerfThreadsObjectiveMissed"),
)

# Every metric an objective names must be in the catalogue (a typo here would silently yield NO DATA).
for _objective in DEFAULT_OBJECTIVES:
    for _name in _objective.metrics:
        sc.metric(_name)


def objectives_from_mapping(
    overrides: Mapping[str, Any], base: tuple[Objective, ...] = DEFAULT_OBJECTIVES
) -> tuple[Objective, ...]:
    """Apply ``{key: threshold}`` (or ``{key: {"threshold": x}}``) overrides to ``base``.

    Raises:
        ConfigError: for an unknown key or a threshold that is not a positive number.
    """
    by_key = {o.key: o for o in base}
    updated = dict(by_key)
    for key, value in overrides.items():
        if key not in by_key:
            raise ConfigError(f"Expected an objective key (one of {', '.join(by_key)}), got {key!r}")
        if isinstance(value, Mapping):
            value = value.get("threshold")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ConfigError(f"Expected objective {key} to be a positive number, got {value!r}")
        updated[key] = replace(by_key[key], threshold=float(value))
    return tuple(updated[o.key] for o in base)


def load_objectives(path: str | Path | None) -> tuple[Objective, ...]:
    """The default objectives, with the thresholds of the TOML file at ``path`` applied.

    The file holds an ``[objectives]`` table of ``key = threshold`` (units as in the defaults: seconds,
    bytes, a 0-1 ratio, threads), e.g. ``command_p95 = 0.3``.

    Raises:
        ConfigError: when the file cannot be read or parsed, or names an unknown objective.
    """
    if path is None:
        return DEFAULT_OBJECTIVES
    try:
        with open(path, "rb") as handle:
            document = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"Expected a readable TOML objectives file, got {str(path)!r}: {exc}") from exc
    table = document.get("objectives", {})
    if not isinstance(table, Mapping):
        raise ConfigError(f"Expected an [objectives] table in {str(path)!r}, got {type(table).__name__}")
    return objectives_from_mapping(table)
