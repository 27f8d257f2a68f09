"""``otel-perf demo``: run the demo agent under the launcher with no backend, print its report, write the
HTML report next to the files, and end with the next steps (the charts, a flame graph, the deploy stack).

Why this module exists: ``make demo`` is the project's main job on a fresh machine; it must show every
part of otel-perf working end to end (launcher, instrumentations, file export, report) in under a minute.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from otel_perf.cli import launcher_environment, launcher_path

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of workload (default 10)")
    parser.add_argument("--load", type=int, default=4, help="thread-pool workers (default 4)")
    parser.add_argument("--faults", default="",
                        help="comma-separated faults to inject: slow-jobs, failing-tools, memory-spike")
    parser.add_argument("--output", type=Path, default=Path("otel-perf-data/demo"),
                        help="where the OTLP JSON lines files go (default otel-perf-data/demo; emptied first)")
    parser.add_argument("--strict", action="store_true",
                        help="exit 1 when an objective is missed (default: exit 0 once the report is printed)")


def run(args: argparse.Namespace) -> int:
    output: Path = args.output.resolve()
    if output.exists():
        shutil.rmtree(output)
    output.mkdir(parents=True)
    launcher = launcher_path()
    if launcher is None:
        print("otel-perf demo: opentelemetry-instrument not found", file=sys.stderr)
        return 2
    base = dict(os.environ)
    for key in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_TRACES_EXPORTER", "OTEL_METRICS_EXPORTER",
                "OTEL_LOGS_EXPORTER"):
        base.pop(key, None)  # the demo needs no backend: it always writes files
    base.update({
        "OTEL_PERF_OUTPUT_DIR": str(output),
        "OTEL_SERVICE_NAME": "otel-perf-demo",
        "OTEL_PERF_TOOLS": "otel_perf.demo.tools:summarize",
        "OTEL_METRIC_EXPORT_INTERVAL": "1000",
        # The demo's asyncio sections last tens of milliseconds: probe the loop often enough to see them.
        "OTEL_PERF_EVENTLOOP_LAG_INTERVAL": "0.01",
        "OTEL_BSP_SCHEDULE_DELAY": "500",
    })
    env, _ = launcher_environment(base)
    command = [launcher, sys.executable, "-m", "otel_perf.demo.agent", "--duration", str(args.duration),
               "--load", str(args.load)]
    if args.faults:
        command += ["--faults", args.faults]
    print(f"otel-perf demo: running the demo agent for {args.duration:g} s under opentelemetry-instrument; "
          f"telemetry goes to {output}", file=sys.stderr)
    completed = subprocess.run(command, env=env, check=False)
    if completed.returncode != 0:
        print(f"otel-perf demo: the demo agent exited with {completed.returncode}", file=sys.stderr)
        return completed.returncode
    from otel_perf.cli import main as cli_main

    page = output / "report.html"
    status = cli_main(["report", str(output), "--html", str(page)])
    if status in (0, 1):
        sys.stdout.write(_next_steps(page))
    return status if args.strict else (0 if status in (0, 1) else status)


def _next_steps(page: Path) -> str:
    """What to do after the demo: the charts, a flame graph of a running program, the deploy stack."""
    return (
        "\nNext steps:\n"
        f"  1. The same report with charts over the run: open {page.as_uri()}\n"
        "  2. A flame graph of a running program: start it with the debug server on, e.g. the demo itself,\n"
        "       OTEL_PERF_DEBUG_ADDR=127.0.0.1:6060 otel-perf demo --duration 60 &\n"
        "     then take 10 seconds of CPU profile and open cpu.html:\n"
        "       otel-perf profile http://127.0.0.1:6060 --seconds 10 --flamegraph cpu.html\n"
        "  3. Traces, dashboards and alerts: the deploy stack runs this demo against a collector, Jaeger,\n"
        "     Prometheus, Alertmanager and Grafana (docs/deploy.md). In otel-perf's repository:\n"
        "       cd deploy && docker compose up -d\n"
        "     then open Grafana http://127.0.0.1:3000 (the otel-perf dashboard), Jaeger http://127.0.0.1:16686\n"
        "     and Prometheus' alerts http://127.0.0.1:9090/alerts.\n"
    )
