#!/usr/bin/env python3
"""Turn a pytest-benchmark JSON file into benchmarks/RESULTS.md and check the budgets.

Every benchmark group pairs a bare case (its name contains ``bare`` or ``baseline``) with instrumented
twins. For each twin the table gives its median and its ratio to the bare median, measured in the same
run. ``benchmarks/budgets.toml`` holds the budgets of the issues, in one table:

* ``max_ratio``: the twin's median over the bare median;
* ``overhead_of`` + ``factor``: (twin - bare) must not exceed ``factor`` times the median of another case
  (``"group::case"``), e.g. half of one SDK ``Histogram.record`` measured in the same run;
* ``baseline``: compare against this case of the group instead of the bare one (e.g. the job that makes the
  identical span itself);
* ``extra`` + ``below_extra``: one of the benchmark's own interleaved ratios must stay below another (e.g.
  the total-CPU ratio below calling the SDK directly per call);
* ``extra`` + ``max_ratio``: a ratio the benchmark measured itself, interleaved (A B A B blocks), and stored in
  its ``extra_info`` under that key. On this machine, whose speed swings by 2x within seconds, interleaved
  ratios are the dependable ones for budgets of a few percent.

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


EXTRA: dict[tuple[str, str], dict[str, Any]] = {}


def load(path: Path) -> dict[str, dict[str, float]]:
    """{group: {case name: median seconds}}; each case's extra_info goes to EXTRA."""
    data = json.loads(path.read_text())
    groups: dict[str, dict[str, float]] = {}
    for bench in data["benchmarks"]:
        group = bench.get("group") or bench["name"]
        groups.setdefault(group, {})[bench["name"]] = bench["stats"]["median"]
        EXTRA[(group, bench["name"])] = bench.get("extra_info") or {}
    return groups


def _fmt(seconds: float) -> str:
    if seconds < 0:
        return "-" + _fmt(-seconds)
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
        if "extra" in budget and "below_extra" in budget:
            info = EXTRA.get((group, case), {})
            a, b = info.get(budget["extra"]), info.get(budget["below_extra"])
            if not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
                rows.append((f"{group} :: {case} [{budget['extra']}]", "not measured", "", False))
                continue
            rows.append((f"{group} :: {case} [{budget['extra']}]", f"{a:.3f}x", f"< {budget['below_extra']} "
                         f"({b:.3f}x)", a < b))
            continue
        if "extra" in budget:
            measured = EXTRA.get((group, case), {}).get(budget["extra"])
            if not isinstance(measured, (int, float)):
                rows.append((f"{group} :: {case} [{budget['extra']}]", "not measured", "", False))
                continue
            rows.append((f"{group} :: {case} [{budget['extra']}]", f"{measured:.3f}x", f"<= {budget['max_ratio']}x",
                         measured <= budget["max_ratio"]))
            continue
        bare = cases.get(budget["baseline"]) if "baseline" in budget else next(
            (v for k, v in cases.items() if _is_bare(k)), None)
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
            rows.append((f"{group} :: {case}", ("+" if overhead >= 0 else "") + _fmt(overhead),
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
    paired = [(g, c, k, v) for (g, c), info in sorted(EXTRA.items()) for k, v in info.items()
              if isinstance(v, (int, float)) and not isinstance(v, bool) and ("/" in k or "vs" in k or "ratio" in k)]
    if paired:
        lines += ["", "## Interleaved ratios (measured inside the benchmark, A B A B blocks)", "",
                  "| group | case | ratio | value |", "|---|---|---|---:|"]
        lines += [f"| {g} | `{c}` | {k} | {v:.4g} |" for g, c, k, v in paired]
    lines += ["", "## Budgets", "", "| budget | measured | limit | |", "|---|---|---|---|"]
    for name, measured, limit, ok in rows:
        lines.append(f"| {name} | {measured} | {limit} | {'PASS' if ok else 'MISS'} |")
    return "\n".join(lines) + "\n"


#: The line in docs/overhead.md after which the page is written by hand (make bench keeps it).
HAND_WRITTEN = "<!-- written by hand below; make bench keeps it -->"

OVERHEAD_HEADER = """# Overhead

What each instrumentation costs, from the last `make bench` (a copy of `benchmarks/RESULTS.md`). Every case
has a bare twin in the same pytest-benchmark group; the hot-path ratio compares the calling thread's cost,
the `total` twins include deferred work (metric collection every N operations). Budgets come from the
issues and are checked by `benchmarks/results.py --check`.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("json", type=Path)
    parser.add_argument("--budgets", type=Path, default=HERE / "budgets.toml")
    parser.add_argument("--output", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--check", action="store_true", help="exit 1 when a budget is missed")
    parser.add_argument("--docs", type=Path, default=HERE.parent / "docs" / "overhead.md",
                        help="also write the table into this docs page")
    args = parser.parse_args(argv)
    groups = load(args.json)
    budgets = tomllib.loads(args.budgets.read_text()).get("budget", []) if args.budgets.exists() else []
    rows = check(groups, budgets)
    text = render(groups, rows)
    args.output.write_text(text)
    if args.docs:
        # Sections written by hand (start-up, under load) follow HAND_WRITTEN in the page and are kept.
        old = args.docs.read_text() if args.docs.exists() else ""
        kept = old[old.index(HAND_WRITTEN):] if HAND_WRITTEN in old else ""
        args.docs.write_text(OVERHEAD_HEADER + text.split("\n", 1)[1] + (f"\n{kept}" if kept else ""))
    missed = [r for r in rows if not r[3]]
    for name, measured, limit, _ in missed:
        print(f"budget missed: {name}: {measured} (limit {limit})", file=sys.stderr)
    print(f"wrote {args.output}: {len(rows) - len(missed)}/{len(rows)} budgets met")
    return 1 if (missed and args.check) else 0


if __name__ == "__main__":
    sys.exit(main())
