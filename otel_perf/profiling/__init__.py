"""Profiling: a pprof debug server for Python, read by ``go tool pprof``.

Why this package exists: DESIGN.md's "Profiling" section. :mod:`.sampler` samples stacks (CPU or wall
clock), :mod:`.heap` turns tracemalloc snapshots into heap profiles, :mod:`.threads` dumps every thread and
asyncio task, :mod:`.pprof` writes and reads ``profile.proto`` by hand, :mod:`.server` serves them over HTTP
as Go's ``net/http/pprof`` does, and :mod:`.fetch`/:mod:`.flamegraph` are the ``otel-perf profile`` command.
Submodules are imported on use, so ``import otel_perf.profiling`` costs nothing at start-up.
"""

from __future__ import annotations

__all__: list[str] = []
