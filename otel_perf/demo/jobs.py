"""The demo's jobs: module-level functions, so that process pools can pickle them."""

from __future__ import annotations

import json
import time
from typing import Any

from otel_perf.demo import tools
from otel_perf.pools import BufferPool

__all__ = ["analyze_file", "memory_spike", "run_command"]

_buffers = BufferPool(size=32 * 1024, max_pooled=8)


def _read(path: str) -> bytes:
    chunks = []
    with open(path, "rb") as handle, _buffers.buffer() as buf:
        view = memoryview(buf)
        while True:
            n = handle.readinto(buf)
            if not n:
                break
            chunks.append(bytes(view[:n]))
    return b"".join(chunks)


def analyze_file(path: str, query: str, slow: float = 0.0, fail_tool: bool = False) -> dict[str, Any]:
    """Read a file through the buffer pool, parse it when it is JSON, search and summarize it."""
    data = _read(path)
    if path.endswith(".json"):
        records = json.loads(data)
        text = "\n".join(r["text"] for r in records)
    else:
        text = data.decode()
    if slow:
        time.sleep(slow)  # the "slow jobs" fault
    hits = tools.search(text, query, fail=fail_tool)
    return {"path": path, "bytes": len(data), "hits": len(hits), "top": tools.summarize(text)}


def run_command(command: dict[str, Any]) -> Any:
    """Run one parsed command in a worker."""
    if command["op"] == "analyze":
        return analyze_file(command["path"], command["query"], command.get("slow", 0.0),
                            command.get("fail_tool", False))
    if command["op"] == "count":
        return tools.word_count(command["path"])
    raise ValueError(f"unknown op {command['op']!r}")


def memory_spike(megabytes: int, hold: float) -> int:
    """Hold ``megabytes`` of memory for ``hold`` seconds (the "memory spike" fault)."""
    block = bytearray(megabytes * 1024 * 1024)
    for i in range(0, len(block), 4096):
        block[i] = 1  # touch every page so it counts in RSS
    time.sleep(hold)
    return len(block)
