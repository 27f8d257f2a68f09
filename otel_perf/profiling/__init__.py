"""Profiling: a pprof debug server for Python, read by ``go tool pprof``, and continuous profiling into OTLP.

Why this package exists: ``docs/profiling.md``. :mod:`.sampler` samples stacks (CPU or wall
clock), :mod:`.spans` tells which span each thread and asyncio task is in (the samples' span labels),
:mod:`.heap` turns tracemalloc snapshots into heap profiles, :mod:`.threads` dumps every thread and
asyncio task, :mod:`.pprof` writes and reads ``profile.proto`` by hand, :mod:`.server` serves them over HTTP
as Go's ``net/http/pprof`` does, :mod:`.continuous` samples all the time and exports OTLP profiles
(:mod:`.otlp`), :mod:`.hotspots` finds where slow spans spent their time for ``otel-perf report``, and
:mod:`.fetch`/:mod:`.flamegraph` are the ``otel-perf profile`` command.
Submodules are imported on use, so ``import otel_perf.profiling`` costs nothing at start-up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from otel_perf._config import Settings

__all__: list[str] = []


def _startup(settings: Settings, is_root: bool) -> None:
    """Process start-up (called by ``otel_perf._sdk`` in every process): continuous profiling, when on.

    With ``OTEL_PERF_PROFILING`` off (the default) this imports nothing.
    """
    if settings.profiling != "off":
        from otel_perf.profiling import continuous

        continuous.start(settings)


def _shutdown() -> None:
    """``Handle.shutdown()`` and ``otel_perf.shutdown()``: continuous profiling exports its last partial
    interval and stops (nothing to do when it never started)."""
    import sys

    continuous = sys.modules.get("otel_perf.profiling.continuous")
    if continuous is not None:
        continuous.stop()
