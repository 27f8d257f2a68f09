"""The demo agent: read a script of commands, parse them, run them as jobs on a thread and a process pool.

Run it under otel-perf (``otel-perf demo`` does) and every part of it is measured without a line of
otel-perf code in the job logic: the pools, the parsers, the subprocess, the runtime. The only otel-perf
code is what a user would write on purpose: ``@otel_perf.tool`` on two tools, ``otel_perf.name_pool`` and
``otel_perf.track_queue`` to give names, ``@otel_perf.job`` on the batch of fetches (a home-made pool of
asyncio tasks), and ``BufferPool`` for file reads.

Usage::

    python -m otel_perf.demo.agent --duration 10 --load 4 [--faults slow-jobs,failing-tools,memory-spike]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import gc
import json
import os
import queue
import random
import shlex
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import otel_perf
from otel_perf.demo import jobs, tools

__all__ = ["FAULTS", "main", "parse_command"]

FAULTS = ("slow-jobs", "failing-tools", "memory-spike")
_WORDS = ("lorem", "ipsum", "dolor", "sit", "amet", "agent", "tool", "queue", "worker", "parse", "trace")


def _command_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agent", add_help=False, exit_on_error=False)
    sub = parser.add_subparsers(dest="op", required=True)
    analyze = sub.add_parser("analyze", add_help=False, exit_on_error=False)
    analyze.add_argument("path")
    analyze.add_argument("--query", default="agent")
    analyze.add_argument("--payload", default="{}", help="JSON options: slow, fail_tool")
    count = sub.add_parser("count", add_help=False, exit_on_error=False)
    count.add_argument("path")
    fetch = sub.add_parser("fetch", add_help=False, exit_on_error=False)
    fetch.add_argument("name")
    fetch.add_argument("--delay", type=float, default=0.02)
    return parser


_PARSER = _command_parser()


def parse_command(line: str, workspace: Path) -> dict[str, Any]:
    """``analyze data.json --query x --payload '{"slow": 0.6}'`` -> a command dict (shlex, argparse, JSON)."""
    args = _PARSER.parse_args(shlex.split(line))
    command: dict[str, Any] = {"op": args.op}
    if args.op in ("analyze", "count"):
        command["path"] = str(workspace / args.path)
    if args.op == "analyze":
        command["query"] = args.query
        command.update(json.loads(args.payload))
    if args.op == "fetch":
        command["name"], command["delay"] = args.name, args.delay
    return command


def build_workspace(directory: Path, rng: random.Random) -> list[str]:
    """Files of 1 KB, 100 KB and 1 MB (the plan's benchmark sizes), as text and as JSON."""
    names = []
    for label, size in (("1k", 1024), ("100k", 100 * 1024), ("1m", 1024 * 1024)):
        lines, total = [], 0
        while total < size:
            line = " ".join(rng.choice(_WORDS) for _ in range(12))
            lines.append(line)
            total += len(line) + 1
        (directory / f"notes-{label}.txt").write_text("\n".join(lines), encoding="utf-8")
        names.append(f"notes-{label}.txt")
        if size <= 100 * 1024:
            # JSON records up to 100 KB: a 1 MB document of small records is a GC-pause generator of its own.
            records = [{"id": i, "text": line} for i, line in enumerate(lines[: max(1, len(lines) // 2)])]
            (directory / f"records-{label}.json").write_text(json.dumps(records), encoding="utf-8")
            names.append(f"records-{label}.json")
    return names


def generate_script(count: int, files: Sequence[str], faults: set[str], rng: random.Random) -> list[str]:
    """A script of ``count`` commands; the faults make some of them slow or their tool fail."""
    script = []
    for i in range(count):
        roll = rng.random()
        if roll < 0.15:
            script.append(f"fetch doc-{i} --delay {rng.choice((0.01, 0.02, 0.05))}")
        elif roll < 0.17:  # a child Python each: under the launcher one costs ~0.3 s of CPU to start
            script.append(f"count {rng.choice([f for f in files if f.endswith('.txt')])}")
        else:
            payload: dict[str, Any] = {}
            if "slow-jobs" in faults and rng.random() < 0.3:
                payload["slow"] = 0.6
            if "failing-tools" in faults and rng.random() < 0.2:
                payload["fail_tool"] = True
            script.append(f"analyze {rng.choice(files)} --query {rng.choice(_WORDS)} "
                          f"--payload {shlex.quote(json.dumps(payload))}")
    return script


@otel_perf.job(pool="fetches", name="fetch")  # a home-made pool: asyncio.gather of fetches, one job a batch
async def _fetch_all(commands: list[dict[str, Any]]) -> list[str]:
    results: list[str] = await asyncio.gather(*(tools.fetch_remote(c["name"], c["delay"]) for c in commands))
    return results


def run(duration: float, load: int, faults: set[str], script_lines: list[str] | None, seed: int) -> dict[str, int]:
    """Run the workload for ``duration`` seconds; returns counts of what happened."""
    # GC tuning from the plan's maintenance list: move the start-up heap (SDK, instrumentation, imports)
    # out of the collector's reach, so that full collections only walk what the workload allocates. The
    # forked pool workers inherit the frozen heap. No gc.collect() first: a full collection of the
    # start-up heap is itself the longest pause of the run (11-14 ms here); what garbage the start-up left
    # stays frozen, a few KiB.
    gc.freeze()
    rng = random.Random(seed)
    stats = {"commands": 0, "ok": 0, "failed": 0, "rejected": 0}
    with tempfile.TemporaryDirectory(prefix="otel-perf-demo-") as tmp:
        workspace = Path(tmp)
        files = build_workspace(workspace, rng)
        commands: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=64)
        otel_perf.track_queue(commands, "commands")

        def produce() -> None:
            deadline = time.monotonic() + duration
            while time.monotonic() < deadline:
                lines = script_lines or generate_script(load * 4, files, faults, rng)
                for line in lines:
                    try:
                        commands.put(parse_command(line, workspace))
                    except (argparse.ArgumentError, ValueError, SystemExit):
                        stats["rejected"] += 1
                time.sleep(0.25)
            commands.put(None)

        producer = threading.Thread(target=produce, name="script-reader", daemon=True)
        producer.start()
        with concurrent.futures.ThreadPoolExecutor(max_workers=load, thread_name_prefix="commands") as threads, \
                concurrent.futures.ProcessPoolExecutor(max_workers=2) as processes:
            otel_perf.name_pool(processes, "analysis")
            # Fork the workers now, before any command thread runs a program: a worker forked while a
            # thread's subprocess pipe is open inherits its write end, and that program's output then
            # never reaches end-of-file (the first submit forks every worker of a fork-context pool).
            processes.submit(os.getpid).result()
            if "memory-spike" in faults:
                spike = processes.submit(jobs.memory_spike, 320, 1.5)
            pending: list[concurrent.futures.Future[Any]] = []
            fetches: list[dict[str, Any]] = []
            while True:
                command = commands.get()
                if command is None:
                    break
                stats["commands"] += 1
                if command["op"] == "fetch":
                    fetches.append(command)
                    if len(fetches) >= 4:
                        asyncio.run(_fetch_all(fetches))
                        stats["ok"] += len(fetches)
                        fetches = []
                    continue
                big = command["op"] == "analyze" and command["path"].endswith(".json")
                pool: concurrent.futures.Executor = processes if big else threads
                pending.append(pool.submit(jobs.run_command, command))
                if len(pending) >= load * 4:
                    _settle(pending, stats)
            if fetches:
                asyncio.run(_fetch_all(fetches))
                stats["ok"] += len(fetches)
            _settle(pending, stats)
            if "memory-spike" in faults:
                spike.result()
        producer.join(5)
    return stats


def _settle(pending: list[concurrent.futures.Future[Any]], stats: dict[str, int]) -> None:
    for future in pending:
        try:
            future.result()
            stats["ok"] += 1
        except tools.ToolFailure:
            stats["failed"] += 1
    pending.clear()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m otel_perf.demo.agent", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds to run (default 10)")
    parser.add_argument("--load", type=int, default=4, help="thread-pool workers and commands per round")
    parser.add_argument("--faults", default="", help=f"comma-separated: {', '.join(FAULTS)}")
    parser.add_argument("--script", type=Path, help="a file of commands to run instead of generated ones")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    faults = {f.strip() for f in args.faults.split(",") if f.strip()}
    unknown = faults - set(FAULTS)
    if unknown:
        parser.error(f"unknown fault(s) {', '.join(sorted(unknown))}; choose from {', '.join(FAULTS)}")
    script = args.script.read_text(encoding="utf-8").splitlines() if args.script else None
    stats = run(args.duration, args.load, faults, script, args.seed)
    print(f"demo: {stats['commands']} commands, {stats['ok']} ok, {stats['failed']} failed tool calls, "
          f"{stats['rejected']} rejected", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
