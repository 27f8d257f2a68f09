"""The demo's tools: a decorated function, an async tool, one named only in ``OTEL_PERF_TOOLS``
(``summarize``: no otel-perf code touches it), and an external program."""

from __future__ import annotations

import asyncio
import collections
import re
import subprocess
import sys

import otel_perf

__all__ = ["ToolFailure", "fetch_remote", "search", "summarize", "word_count"]

_WORD = re.compile(r"[a-z]+")


class ToolFailure(RuntimeError):
    """A tool failed (the demo's injected fault)."""


@otel_perf.tool(description="Search a text for the lines that mention a query")
def search(text: str, query: str, limit: int = 5, fail: bool = False) -> list[str]:
    if fail:
        raise ToolFailure(f"search index unavailable for {query!r}")
    hits = [line for line in text.splitlines() if query in line]
    return hits[:limit]


def summarize(text: str, top: int = 3) -> dict[str, int]:
    """The most frequent words. Made a tool by OTEL_PERF_TOOLS=otel_perf.demo.tools:summarize."""
    counts = collections.Counter(_WORD.findall(text.lower()))
    return dict(counts.most_common(top))


def word_count(path: str) -> int:
    """Count words with an external program (a Python child, so the demo needs no `wc`)."""
    code = "import sys; print(len(open(sys.argv[1], 'rb').read().split()))"
    out = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, encoding="utf-8",
                         check=True, timeout=60)
    return int(out.stdout)


@otel_perf.tool(name="fetch_remote", type="extension", description="Fetch a document (simulated latency)")
async def fetch_remote(name: str, delay: float) -> str:
    await asyncio.sleep(delay)
    return f"document {name}"
