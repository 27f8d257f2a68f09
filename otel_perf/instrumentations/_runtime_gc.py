"""GC pause durations from ``gc.callbacks``, measured without disturbing the collector.

Why this module exists: CPython reports how many collections ran (``gc.get_stats()``) but not how long
they paused the program, and the plan's GC objective (``otel_perf.gc.pause.max`` < 10 ms) needs the
pauses. ``gc.callbacks`` is the only hook, and it runs inside the collector: prometheus_client removed its
GC histogram after a lock in such a callback deadlocked asyncio programs. So the callback here takes no
lock, makes no SDK call and grows nothing: at "start" it stores one timestamp into a preallocated slot, at
"stop" it records the difference into a preallocated per-generation
:class:`~otel_perf._aggregate.FixedSeries` (collections never overlap, so one writer at a time). The
aggregates are published as the ``otel_perf.gc.pause.duration`` histogram at each metric collection,
losing no pause however many happen in between.
"""

from __future__ import annotations

import gc
from bisect import bisect_left
from collections.abc import Callable
from time import perf_counter_ns
from typing import Any

from otel_perf._aggregate import AggregatedHistogram, FixedSeries
from otel_perf._semconv import CPYTHON_GC_GENERATION, GC_PAUSE_BOUNDARIES, metric

__all__ = ["GENERATIONS", "GcPauseMonitor", "gc_pause_histogram"]

GENERATIONS = tuple(range(len(gc.get_stats())))

_PAUSE = metric("otel_perf.gc.pause.duration")

_histogram: AggregatedHistogram | None = None


def gc_pause_histogram() -> AggregatedHistogram:
    """The process-wide ``otel_perf.gc.pause.duration`` aggregate (one: gc.callbacks is process-wide)."""
    global _histogram
    if _histogram is None:
        _histogram = AggregatedHistogram(_PAUSE.name, _PAUSE.unit, _PAUSE.description, GC_PAUSE_BOUNDARIES)
    return _histogram


def _make_callback(series: tuple[FixedSeries, ...]) -> Callable[[str, dict[str, Any]], None]:
    # Everything the callback touches is bound as a default argument: local lookups only, no globals,
    # no attribute chains, and FixedSeries.record inlined (a method call is about a third of what the
    # "stop" branch costs; benchmarks/instrumentations/test_runtime.py, gc-callback-paired).
    # ``started`` begins at the creation time: were the callback installed during a collection, its
    # first "stop" would then measure less than the real pause, never a bogus huge one.
    started = [perf_counter_ns()]
    parts = tuple(s.parts() for s in series)

    def _gc_pause_callback(phase: str, info: dict[str, Any], _now: Callable[[], int] = perf_counter_ns,
                           _started: list[int] = started,
                           _parts: tuple[tuple[list[Any], tuple[float, ...], list[float]], ...] = parts,
                           _bisect: Callable[[tuple[float, ...], float], int] = bisect_left) -> None:
        if phase == "start":
            _started[0] = _now()
            return
        value = (_now() - _started[0]) * 1e-9
        cell, bounds, window = _parts[info["generation"]]
        cell[_bisect(bounds, value) + 4] += 1  # the bucket first: Series.record says why
        cell[0] += 1
        cell[1] += value
        if value < cell[2]:
            cell[2] = value
        if value > cell[3]:
            cell[3] = value
        if value > window[0]:
            window[0] = value

    return _gc_pause_callback


class GcPauseMonitor:
    """Installs the pause callback into ``gc.callbacks`` and removes exactly that object again."""

    def __init__(self) -> None:
        histogram = gc_pause_histogram()
        self.series: tuple[FixedSeries, ...] = tuple(
            histogram.fixed_series({CPYTHON_GC_GENERATION: generation}) for generation in GENERATIONS
        )
        self._callback: Callable[[str, dict[str, Any]], None] | None = None

    @property
    def histogram(self) -> AggregatedHistogram:
        return gc_pause_histogram()

    def start(self) -> None:
        if self._callback is None:
            self._callback = _make_callback(self.series)
            gc.callbacks.append(self._callback)

    def stop(self) -> None:
        callback, self._callback = self._callback, None
        if callback is not None:
            # Remove by identity: a user's equal-comparing callback must stay.
            for index, installed in enumerate(gc.callbacks):
                if installed is callback:
                    del gc.callbacks[index]
                    break

    def take_max(self) -> list[float]:
        """The longest pause per generation since the previous call (0.0 where none happened)."""
        return [s.take_max() for s in self.series]
