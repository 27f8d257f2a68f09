"""The high-water mark of Python threads alive at once, kept as threads start.

Why this module exists: the plan's "threads peak < 1000" objective is about bursts, and a burst of threads
that starts and ends between two metric collections is invisible to a count taken at collection time.
``threading.Thread.start`` is patched (a plain closure: starting a thread costs about 100 us, the check
under a lock about 1 us) to raise the mark right after each start. Every thread made through
``threading`` (``ThreadPoolExecutor`` workers included) goes through it; ``_thread.start_new_thread``
called directly does not, and neither does ``threading.active_count()``, so both agree on what a Python
thread is. ``uninstrument()`` restores the original ``Thread.start`` (identity).
"""

from __future__ import annotations

import functools
import threading
from typing import Any

from otel_perf._patching import Patcher
from otel_perf._safety import guarded

__all__ = ["ThreadPeak"]


class ThreadPeak:
    """Keeps :attr:`peak`, the most Python threads alive at once since :meth:`start` (or a fork)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.peak = threading.active_count()
        self._patcher = Patcher("otel_perf_runtime.threads")

    def observe(self, count: int | None = None) -> int:
        """Raise the mark to ``count`` (default: the threads alive now) and return the mark."""
        if count is None:
            count = threading.active_count()
        if count > self.peak:
            with self._lock:
                if count > self.peak:
                    self.peak = count
        return self.peak

    def start(self) -> None:
        self.peak = threading.active_count()
        self._patcher.restart()
        self._patcher.replace("threading:Thread.start", self._make_start, in_place=True)

    def stop(self) -> None:
        self._patcher.unpatch_all()

    def after_fork_in_child(self) -> None:
        # Only the forking thread survives fork(). threading's own after-fork clean-up may not have run
        # yet, so active_count() could still count the parent's threads. The lock may have been held by
        # a parent thread.
        self._lock = threading.Lock()
        self.peak = 1

    def _make_start(self, original: Any) -> Any:
        peak = self
        active_count = threading.active_count

        @functools.wraps(original)
        def start(self: threading.Thread) -> None:
            # Bind through the descriptor protocol: the raw class attribute may be another tool's wrapper
            # (contrib's threading instrumentation uses a wrapt FunctionWrapper), which needs its instance.
            original.__get__(self, type(self))()
            with guarded("thread peak"):
                # start() returns once the new thread runs; if it already ended, it was alive a moment ago.
                peak.observe(active_count() + (0 if self.is_alive() else 1))

        return start
