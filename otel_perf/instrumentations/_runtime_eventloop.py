"""Event-loop lag and task counts for every running asyncio loop, including loops made by ``asyncio.run``.

Why this module exists: a coroutine that blocks (CPU work, a synchronous call) stalls every other task of
its loop, and nothing in asyncio reports it. A probe scheduled with ``loop.call_later(interval, ...)``
measures how late it runs; that lateness is the loop's lag. The probe must reach loops that do not exist
yet when otel-perf starts (``asyncio.run`` makes a new one), so the module patches
``asyncio.events._set_running_loop``: every ``BaseEventLoop.run_forever`` calls it, in the loop's own
thread, with the loop when it starts running and with ``None`` when it stops (Python 3.10-3.13 alike;
3.12 moved the calls into ``_run_forever_setup``/``_run_forever_cleanup``, still through the module
attribute). The patch attaches the probe at start and cancels it at stop. A loop already running in the
instrumenting thread is attached at once. Loops that do not call it (uvloop imported before instrumenting)
are not seen.

The patched function takes no lock: since Python 3.12 asyncio calls it from its own after-fork hook,
where a lock held by a vanished parent thread would never be released. The registry is a dict keyed by
thread id; each key is written only by its own thread.
"""

from __future__ import annotations

import functools
import sys
import threading
from typing import TYPE_CHECKING, Any

from otel_perf._aggregate import AggregatedHistogram, Series
from otel_perf._patching import Patcher
from otel_perf._safety import guard, guarded
from otel_perf._semconv import DURATION_BOUNDARIES, metric

if TYPE_CHECKING:
    import asyncio

__all__ = ["EventLoopMonitor", "eventloop_lag_histogram"]

_LAG = metric("otel_perf.eventloop.lag")
_PATCH_PATH = "asyncio.events:_set_running_loop"

_histogram: AggregatedHistogram | None = None


def eventloop_lag_histogram() -> AggregatedHistogram:
    """The process-wide ``otel_perf.eventloop.lag`` aggregate."""
    global _histogram
    if _histogram is None:
        _histogram = AggregatedHistogram(_LAG.name, _LAG.unit, _LAG.description, DURATION_BOUNDARIES)
    return _histogram


class _Probe:
    """The lag probe of one running loop: reschedules itself every ``interval`` seconds."""

    __slots__ = ("due", "handle", "interval", "loop", "series")

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float, series: Series) -> None:
        self.loop = loop
        self.interval = interval
        self.series = series
        self.due = 0.0
        self.handle: asyncio.TimerHandle | None = None

    def schedule(self) -> None:
        self.due = self.loop.time() + self.interval
        self.handle = self.loop.call_at(self.due, self._run)

    def _run(self) -> None:
        with guarded("event-loop lag probe"):
            lag = self.loop.time() - self.due
            self.series.record(lag if lag > 0.0 else 0.0)
        self.schedule()

    def cancel(self) -> None:
        handle, self.handle = self.handle, None
        if handle is not None:
            handle.cancel()


class EventLoopMonitor:
    """Attaches a lag probe to each loop while it runs, and counts the unfinished tasks of those loops.

    Args:
        interval: seconds between probes (``OTEL_PERF_EVENTLOOP_LAG_INTERVAL``).
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._series = eventloop_lag_histogram().series({})
        self._probes: dict[int, _Probe] = {}  # thread id -> probe of the loop running in that thread
        self._patcher = Patcher("otel_perf_runtime.eventloop")
        self._active = False

    @property
    def histogram(self) -> AggregatedHistogram:
        return eventloop_lag_histogram()

    def start(self) -> None:
        if self._active:
            return
        self._active = True
        self._patcher.restart()
        self._patcher.replace(_PATCH_PATH, self._make_patch)
        loop = _running_loop()
        if loop is not None:
            self._attach(loop)

    def stop(self) -> None:
        self._active = False
        self._patcher.unpatch_all()
        for ident, probe in list(self._probes.items()):
            self._probes.pop(ident, None)
            if probe.loop.is_closed():
                continue
            if ident == threading.get_ident():
                probe.cancel()
            else:
                # TimerHandle.cancel is not thread-safe: let the loop's own thread do it.
                try:
                    probe.loop.call_soon_threadsafe(probe.cancel)
                except RuntimeError:
                    pass  # closed in the meantime

    def _make_patch(self, original: Any) -> Any:
        monitor = self

        @functools.wraps(original)
        def _set_running_loop(loop: Any) -> None:
            if loop is None:
                monitor._detach()
            original(loop)
            if loop is not None and monitor._active:
                monitor._attach(loop)

        # The C original says module "_asyncio"; ours lives at asyncio.events, where pickle finds it.
        _set_running_loop.__module__ = "asyncio.events"
        return _set_running_loop

    @guard
    def _attach(self, loop: asyncio.AbstractEventLoop) -> None:
        ident = threading.get_ident()
        previous = self._probes.get(ident)
        if previous is not None:
            if previous.loop is loop:
                return
            previous.cancel()
        probe = _Probe(loop, self.interval, self._series)
        probe.schedule()
        self._probes[ident] = probe

    @guard
    def _detach(self) -> None:
        probe = self._probes.pop(threading.get_ident(), None)
        if probe is not None:
            probe.cancel()

    def loops(self) -> list[asyncio.AbstractEventLoop]:
        """The loops currently running with a probe attached."""
        return [probe.loop for probe in list(self._probes.values())]

    def task_count(self) -> int:
        """Unfinished tasks across the running loops."""
        loops = self.loops()
        if not loops:
            return 0
        import asyncio

        total = 0
        for loop in loops:
            if loop.is_closed():
                continue
            try:
                total += len(asyncio.all_tasks(loop))
            except RuntimeError:
                continue  # the task set changed during iteration too often; skip this loop this time
        return total

    def after_fork_in_child(self) -> None:
        # Only the forking thread survives: loops of other threads no longer run here.
        ident = threading.get_ident()
        self._probes = {k: v for k, v in self._probes.items() if k == ident}


def _running_loop() -> asyncio.AbstractEventLoop | None:
    # asyncio is imported only by programs that use it; otel-perf does not import it for them.
    events = sys.modules.get("asyncio.events")
    if events is None:
        return None
    loop: asyncio.AbstractEventLoop | None = events._get_running_loop()
    return loop
