#!/usr/bin/env python3
"""Turn a pytest-benchmark JSON file into benchmarks/RESULTS.md and check the budgets.

Every benchmark group pairs a bare case (its name contains ``bare`` or ``baseline``) with instrumented
twins. For each twin the table gives its median and its ratio to the bare median, measured in the same
run. ``benchmarks/budgets.toml`` holds the budgets of the issues, in one table:

* ``max_ratio``: the twin's median over the bare median;
* ``overhead_of`` + ``factor``: (twin - bare) must not exceed ``factor`` times the median of another case
  (``"group::case"``), e.g. half of one SDK ``Histogram.record`` measured in the same run.

Usage: ``python benchmarks/results.py benchmarks/results.json [--check]`` (exit 1 when a budget is missed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

HERE = Path(__file__).resolve().parent


def _is_bare(name: str) -> bool:
    short = name.split("[")[0]
    return "bare" in short or "baseline" in short


def load(path: Path) -> dict[str, dict[str, float]]:
    """{group: {case name: median seconds}}"""
    data = json.loads(path.read_text())
    groups: dict[str, dict[str, float]] = {}
    for bench in data["benchmarks"]:
        groups.setdefault(bench.get("group") or bench["name"], {})[bench["name"]] = bench["stats"]["median"]
    return groups


def _fmt(seconds: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6), ("ns", 1e-9)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds:.3g} s"


def check(groups: dict[str, dict[str, float]], budgets: list[dict[str, Any]]) -> list[tuple[str, str, str, bool]]:
    """Rows of (budget, measured, limit, ok)."""
    rows = []
    for budget in budgets:
        group, case = budget["group"], budget["case"]
        cases = groups.get(group, {})
        if case not in cases:
            rows.append((f"{group} :: {case}", "not measured", "", False))
            continue
        bare = next((v for k, v in cases.items() if _is_bare(k)), None)
        if bare is None:
            rows.append((f"{group} :: {case}", "no bare case in group", "", False))
            continue
        value = cases[case]
        if "max_ratio" in budget:
            ratio = value / bare
            rows.append((f"{group} :: {case}", f"{ratio:.3f}x", f"<= {budget['max_ratio']}x",
                         ratio <= budget["max_ratio"]))
        else:
            ref_group, ref_case = budget["overhead_of"].split("::")
            reference = groups.get(ref_group, {}).get(ref_case)
            if reference is None:
                rows.append((f"{group} :: {case}", f"reference {budget['overhead_of']} not measured", "", False))
                continue
            overhead = value - bare
            limit = budget["factor"] * reference
            rows.append((f"{group} :: {case}", f"+{_fmt(overhead)}",
                         f"<= {budget['factor']} x {ref_case} ({_fmt(limit)})", overhead <= limit))
    return rows


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def render(groups: dict[str, dict[str, float]], rows: list[tuple[str, str, str, bool]]) -> str:
    versions = []
    for package in ("opentelemetry-sdk", "opentelemetry-instrumentation", "otel-perf", "pytest-benchmark"):
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            pass
    lines = [
        "# Benchmark results", "",
        "Written by `make bench` (`benchmarks/results.py`). Ratios compare medians measured in the same run; this",
        "machine's speed swings by about 2x within seconds, so absolute times are indicative only.", "",
        f"- machine: {platform.machine()}, {_cpu()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()} ({platform.python_implementation()})",
        f"- versions: {', '.join(versions)}", "",
        "| group | case | median | ratio to bare |", "|---|---|---:|---:|",
    ]
    for group in sorted(groups):
        cases = groups[group]
        bare = next((v for k, v in cases.items() if _is_bare(k)), None)
        for case, median in sorted(cases.items(), key=lambda kv: (not _is_bare(kv[0]), kv[0])):
            ratio = "1 (bare)" if _is_bare(case) else (f"{median / bare:.3f}" if bare else "")
            lines.append(f"| {group} | `{case}` | {_fmt(median)} | {ratio} |")
    lines += ["", "## Budgets", "", "| budget | measured | limit | |", "|---|---|---|---|"]
    for name, measured, limit, ok in rows:
        lines.append(f"| {name} | {measured} | {limit} | {'PASS' if ok else 'MISS'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("json", type=Path)
    parser.add_argument("--budgets", type=Path, default=HERE / "budgets.toml")
    parser.add_argument("--output", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--check", action="store_true", help="exit 1 when a budget is missed")
    args = parser.parse_args(argv)
    groups = load(args.json)
    budgets = tomllib.loads(args.budgets.read_text()).get("budget", []) if args.budgets.exists() else []
    rows = check(groups, budgets)
    args.output.write_text(render(groups, rows))
    missed = [r for r in rows if not r[3]]
    for name, measured, limit, _ in missed:
        print(f"budget missed: {name}: {measured} (limit {limit})", file=sys.stderr)
    print(f"wrote {args.output}: {len(rows) - len(missed)}/{len(rows)} budgets met")
    return 1 if (missed and args.check) else 0


if __name__ == "__main__":
    sys.exit(main())
