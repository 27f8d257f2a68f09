"""A sampling profiler for Python threads: CPU mode (threads that ran) and wall mode (all threads).

Why this module exists: Go's ``/debug/pprof/profile`` answers "where does the CPU go?" without restarting
the program; Python has no built-in equivalent that can be switched on for a few seconds in production.
This sampler reads every thread's stack with ``sys._current_frames()`` at a fixed rate (100 Hz by default,
as Go does) and aggregates the stacks as it goes, so a long profile costs memory in proportion to the
number of distinct stacks, not to its length.

Costs measured on a 2-core development machine (the set-up of ``benchmarks/profiling/test_sampler.py``): walking
and aggregating every stack of 5 threads about 30 deep costs 70-235 µs per sample, 2.5-3.5% of a CPU-bound
thread at 100 Hz. These keep this sampler far below that:

* CPU mode reads each thread's CPU clock and walks only threads that used CPU since the previous tick. The
  clock of another thread is derived from its *native thread id* (Linux's ``MAKE_THREAD_CPUCLOCK(tid,
  CPUCLOCK_SCHED)``, which is what glibc's ``pthread_getcpuclockid`` computes too). A thread id that has
  exited gives ``EINVAL`` instead of touching freed memory, which a stale ``pthread_t`` could do.
  ``clock_gettime`` does not release the GIL, so a tick never waits for the GIL twice. Where that clock is
  refused, ``/proc/self/task/<tid>/stat`` (utime + stime) is read instead.
* A thread whose top frame and instruction are unchanged since its previous sample (a parked thread)
  reuses the previous stack instead of walking it again; a thread still in the same function only
  updates its innermost location.
* Each thread keeps the count cells of its current stack, so such samples build no stack tuple and hash
  nothing; code objects are looked up by id (a code object's hash is recomputed from its constants and
  names on every lookup); functions and locations go into the pprof builder only when the profile is
  encoded, so the first walk of a profile (every frame new) does not encode records while it holds the GIL.

A tick runs once per 10 ms on a thread that slept in between, with its caches cold: on this machine the
same tick costs 5 µs run twice in a row and 20-45 µs (CPU mode, 5 threads) as the first thing after the
sleep, and waking up and winning the GIL from a busy thread costs the sampling thread another 50-60 µs of
CPU that no change here can remove. What a tick can save is Python executed and memory touched.

Samples carry a ``thread`` label (the thread's name), for a thread running an asyncio event loop a
``task`` label (the name of the task that was running), and, when span tracking is on
(:mod:`otel_perf.profiling.spans`) and a recording span was active in that thread or task, ``trace_id``,
``span_id`` and ``span_name`` (the name of the trace's local root span). Samples outside any span carry
no span labels.

A sampler either runs once (``run``/``start``+``stop``, what the debug server does) or keeps running
while :meth:`Sampler.take` hands over what it collected so far as a :class:`Snapshot` and starts afresh
(what continuous profiling does, once per exported profile).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from otel_perf._safety import log_once, raise_internal_errors
from otel_perf.profiling import spans as span_tracking
from otel_perf.profiling._stackwalk import RESUMABLE, Locations, ThreadState, walk
from otel_perf.profiling._threadclock import _choose_cpu_clock, _cpu_ns_clock, _native_ids_after_fork
from otel_perf.profiling.snapshot import Labels, Mode, Snapshot, encode_pprof

__all__ = ["Mode", "Sampler", "SamplerStats", "Snapshot", "encode_pprof", "profile"]

#: Frames kept per stack (innermost first); deeper stacks are cut at the root side.
MAX_DEPTH = 256
#: Distinct (labels, stack) pairs kept; further new stacks are counted under one "(other stacks)" stack.
MAX_STACKS = 50_000

_NO_TASKS: dict[int, Any] = {}
_NO_SPAN = span_tracking.NO_SPAN
_current_frames = sys._current_frames
clock_gettime_ns = time.clock_gettime_ns


@dataclass(slots=True)
class SamplerStats:
    """What a sampler did: ticks, samples taken, and the time spent taking them.

    ``sampling_ns`` is the wall time spent inside ticks (holding the GIL); ``thread_cpu_ns`` is the sampling
    thread's whole CPU time, including waking up and taking the GIL.
    """

    ticks: int = 0
    samples: int = 0
    frames_walked: int = 0
    sampling_ns: int = 0
    duration_ns: int = 0
    thread_cpu_ns: int = 0

    @property
    def cost_per_tick_ns(self) -> float:
        return self.sampling_ns / self.ticks if self.ticks else 0.0

    @property
    def thread_cpu_per_tick_ns(self) -> float:
        return self.thread_cpu_ns / self.ticks if self.ticks else 0.0

    @property
    def achieved_hz(self) -> float:
        return self.ticks * 1e9 / self.duration_ns if self.duration_ns else 0.0


class Sampler:
    """Samples the stacks of this process's threads and aggregates them into a pprof profile.

    Usage::

        sampler = Sampler("cpu", hz=100)
        sampler.start()          # samples in a background daemon thread
        ...
        data = sampler.stop()    # gzipped pprof bytes

        data = Sampler("wall").run(seconds=5)   # samples in the calling thread

    Args:
        mode: ``"cpu"`` samples only threads that used CPU since the previous tick, each weighted by the CPU
            time it used; ``"wall"`` samples every thread, weighted by the time since the previous tick.
        hz: samples per second (1-1000).
        asyncio_tasks: add a ``task`` label naming the running asyncio task of event-loop threads.
        exclude: thread idents never to sample (the sampling thread itself is always excluded).
        spans: the span tracker whose active spans label the samples; by default the process's
            (:func:`otel_perf.profiling.spans.tracker`), when installed; None for no span labels.
    """

    def __init__(self, mode: Mode = "cpu", hz: float = 100.0, *, asyncio_tasks: bool = True,
                 exclude: Collection[int] = (), max_stacks: int = MAX_STACKS,
                 max_depth: int = MAX_DEPTH, spans: Any = True) -> None:
        if mode not in ("cpu", "wall"):
            raise ValueError(f"mode must be 'cpu' or 'wall', got {mode!r}")
        if not 1 <= hz <= 1000:
            raise ValueError(f"hz must be between 1 and 1000, got {hz!r}")
        self.mode: Mode = mode
        self.hz = float(hz)
        self.interval_ns = int(1e9 / self.hz)
        self.asyncio_tasks = asyncio_tasks
        self.stats = SamplerStats()
        self._exclude = set(exclude)
        self._max_stacks = max_stacks
        self._max_depth = max_depth
        self._cpu_clock = _choose_cpu_clock() if mode == "cpu" else None
        # The usual clock, read in the tick without a Python call: clock_gettime on the clock id kept per thread
        self._clock_direct = self._cpu_clock is _cpu_ns_clock
        self._spans: span_tracking.SpanTracker | None = span_tracking.tracker() if spans is True else spans
        # span id -> labels, for the spans sampled in this window (worked out once per span)
        self._span_labels: dict[int, span_tracking.SpanLabels] = {}
        self._comments: list[str] = []
        if mode == "cpu" and self._cpu_clock is None:
            self._comments.append("per-thread CPU clocks unavailable: every thread was sampled")
        # Locations are numbered here (_stackwalk.Locations), in the order they are first seen, and given to
        # the builder only by encode(): the builder encodes a record per function and location as it goes,
        # which made the first tick of a profile (every frame new) cost as much as ten later ones.
        self._locations = Locations()
        # (labels, stack) -> [count, value]
        self._counts: dict[tuple[Labels, tuple[int, ...]], list[int]] = {}
        self._threads: dict[int, ThreadState] = {}
        # asyncio's loop -> running task dict, found once asyncio.tasks is imported (it is never rebound)
        self._current_tasks: dict[Any, Any] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_ns = 0
        self._window_unix_ns = time.time_ns()  # when the current window began (wall clock)
        self._window_ns = time.perf_counter_ns()  # the same instant on the monotonic clock
        self._window_end_ns: int | None = None  # when sampling stopped (else the window is still open)
        self._done = False
        # take() from another thread: the sampling thread takes the snapshot between two ticks
        self._take_requested = False
        self._taken = threading.Event()
        self._snapshot: Snapshot | None = None
        self._loop_ident: int | None = None

    # --- running ---------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start sampling in a background daemon thread."""
        if self._thread is not None or self._done:
            raise RuntimeError("a Sampler runs once")
        self._thread = threading.Thread(target=self._run_until_stopped, name="otel-perf-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> bytes:
        """Stop the background thread and return the profile (gzipped pprof)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return self.encode()

    def run(self, seconds: float, stop: threading.Event | None = None) -> bytes:
        """Sample in the calling thread for ``seconds`` (or until ``stop`` is set); return the profile."""
        if self._thread is not None or self._done:
            raise RuntimeError("a Sampler runs once")
        self._loop(time.perf_counter_ns() + int(seconds * 1e9), stop or self._stop)
        return self.encode()

    def _run_until_stopped(self) -> None:
        try:
            self._loop(None, self._stop)
        except Exception as exc:  # a background thread must not print a traceback into the program's stderr
            if raise_internal_errors():
                raise
            log_once(("sampler", type(exc).__name__),
                     "otel-perf: the sampling profiler stopped (%s: %s); what it sampled so far is kept. Not "
                     "logged again.", type(exc).__name__, exc, exc_info=True)

    def _loop(self, deadline_ns: int | None, stop: threading.Event) -> None:
        own = threading.get_ident()
        self._exclude.add(own)
        self._threads.pop(own, None)  # sampled by hand before (the tick skips only idents without state)
        self._start_ns = self._window_ns = time.perf_counter_ns()
        self._window_unix_ns = time.time_ns()
        cpu_start = time.thread_time_ns()
        self._loop_ident = own
        self._prime()
        interval = self.interval_ns
        next_tick = self._start_ns + interval
        last_tick = self._start_ns
        stats = self.stats
        sleep = time.sleep
        clock = time.perf_counter_ns
        is_set = stop.is_set
        tick = self._tick
        now = clock()
        try:
            # One pass per tick: one sleep, one look at stop, one at take requests, two clock reads.
            while not is_set():
                if self._take_requested:
                    self._hand_over()
                if deadline_ns is not None and now >= deadline_ns:
                    break
                wait = next_tick - now
                if deadline_ns is not None:
                    wait = min(wait, deadline_ns - now)
                if wait > 0:
                    # time.sleep, not Event.wait: Event.wait runs ~20 lines of Python (a new lock, the
                    # waiter list) per tick, which doubled the sampler's CPU per tick. stop() is seen
                    # within one interval.
                    sleep(wait / 1e9)
                    now = clock()
                    continue
                tick(now - last_tick)
                ended = clock()
                stats.ticks += 1
                stats.sampling_ns += ended - now
                last_tick = now
                next_tick += interval
                if next_tick <= ended:
                    # Fell behind (the GIL was busy): skip the missed ticks rather than burst.
                    next_tick = ended + interval - (ended - next_tick) % interval
                now = ended
        finally:
            stats.duration_ns = time.perf_counter_ns() - self._start_ns
            stats.thread_cpu_ns = time.thread_time_ns() - cpu_start
            self._loop_ident = None
            self._window_end_ns = time.perf_counter_ns()
            if self._take_requested:  # a take() waiting for this thread: hand over before leaving
                self._hand_over()
            self._threads.clear()  # drop the frames kept for reuse

    # --- sampling --------------------------------------------------------------------------------------

    def _prime(self) -> None:
        """Read every thread's CPU clock once, so the first tick counts only CPU used after the start."""
        active: dict[int, threading.Thread] = getattr(threading, "_active", {})
        for ident in sys._current_frames():
            if ident in self._exclude:
                continue
            state = self._state(ident, active)
            if self._cpu_clock is not None and state.native_id is not None:
                value = self._cpu_clock(state.native_id)
                if value is None:
                    state.clock_ok = False
                else:
                    state.last_cpu = value

    def _state(self, ident: int, active: dict[int, threading.Thread]) -> ThreadState:
        """The state of thread ``ident``; a new one when the ident now belongs to another thread (pthread
        idents are reused as soon as a thread ends)."""
        thread = active.get(ident)
        state = self._threads.get(ident)
        if state is None or state.thread is not thread:
            native_id = _native_ids_after_fork.get(ident) or (
                getattr(thread, "native_id", None) if thread is not None else None)
            state = self._threads[ident] = ThreadState(thread, native_id)
        return state

    def _running_tasks(self) -> dict[int, Any]:
        """Thread ident -> the asyncio task running in that thread's event loop."""
        current = self._current_tasks
        if current is None:
            tasks_module = sys.modules.get("asyncio.tasks")
            if tasks_module is None:
                return _NO_TASKS
            current = self._current_tasks = getattr(tasks_module, "_current_tasks", None)
            if current is None:
                return _NO_TASKS
        if not current:
            return _NO_TASKS
        out: dict[int, Any] = {}
        for loop, task in list(current.items()):
            ident = getattr(loop, "_thread_id", None)
            if ident is not None and task is not None:
                out[ident] = task
        return out

    def _tick(self, elapsed_ns: int) -> None:
        """Take one sample of every thread (CPU mode: of every thread that used CPU since the last tick).

        This runs 100 times a second while holding the GIL, with the caches cold (the sampling thread
        sleeps in between), so its cost is mostly the Python it executes: the common cases (a parked
        thread, a thread still in the same function) take no call and no allocation besides the reads
        of the clock.
        """
        frames = _current_frames()
        states = self._threads
        if len(states) >= len(frames):
            # Forget threads that ended (and the frames kept for them); frames also holds at least
            # the sampling thread, which has no state, so equal sizes mean one ended.
            for gone in [ident for ident in states if ident not in frames]:
                del states[gone]
        current = self._current_tasks
        if current:
            tasks = self._running_tasks()
        elif current is None and self.asyncio_tasks and "asyncio.tasks" in sys.modules:
            tasks = self._running_tasks()  # asyncio was imported: find its dict of running tasks
        else:
            tasks = _NO_TASKS  # no asyncio, or no task runs anywhere
        cpu_clock = self._cpu_clock
        direct = self._clock_direct
        exclude = self._exclude
        stats = self.stats
        tracker = self._spans
        active_span = tracker.active_span if tracker is not None else None
        locations = self._locations
        by_code = locations.by_code
        limit = self._max_depth
        active: dict[int, threading.Thread] = getattr(threading, "_active", {})
        for ident, frame in frames.items():
            state = states.get(ident)
            if state is None or state.thread is not active.get(ident):
                if ident in exclude:
                    continue
                state = self._state(ident, active)
            if cpu_clock is not None:
                if not state.clock_ok:
                    continue  # no clock for this thread (not started by threading): cannot tell
                if direct:
                    try:
                        now_cpu: int | None = clock_gettime_ns(state.clock_id)
                    except OSError:
                        now_cpu = None
                else:
                    now_cpu = cpu_clock(state.native_id)  # type: ignore[arg-type]
                if now_cpu is None:
                    state.clock_ok = False  # exited between the frame snapshot and now
                    continue
                value = now_cpu - state.last_cpu
                state.last_cpu = now_cpu
                if value <= 0:
                    continue
            else:
                value = elapsed_ns
            # The stack, from the previous walk where the innermost frame is the same (non-resumable)
            # frame object: it is still running, so its callers and their instructions are unchanged
            # and only its own instruction can differ.
            walked = state.frames
            if walked and frame is walked[-1] and not frame.f_code.co_flags & RESUMABLE:
                lasti = frame.f_lasti
                if lasti == state.lastis[-1]:
                    location = state.stack[-1]
                else:
                    code = frame.f_code
                    by_lasti = by_code.get(id(code))
                    location = by_lasti.get(lasti) if by_lasti is not None else None  # type: ignore[assignment]
                    if location is None:
                        location = locations.new_location(code, lasti, frame.f_lineno or code.co_firstlineno)
                    state.lastis[-1] = lasti
                    state.stack[-1] = location
                    stats.frames_walked += 1
            else:
                location = walk(frame, state, locations, limit, stats)
            thread = state.thread
            name = thread.name if thread is not None else f"thread-{ident}"
            task = tasks.get(ident) if tasks else None
            span = active_span(ident, task) if active_span is not None else None
            if name != state.name or task is not state.task_object or span is not state.span:
                state.cells.clear()
                state.name = name
                if task is not state.task_object:
                    state.task_object = task
                    state.task = self._task_name(task)
                if span is not state.span:
                    state.span = span
                    state.span_labels = self._labels_of(span)
            cell = state.cells.get(location)
            if cell is None:
                cell = state.cells[location] = self._cell(state)
            cell[0] += 1
            cell[1] += value
            stats.samples += 1
        del frames

    @staticmethod
    def _task_name(task: Any) -> str:
        if task is None:
            return ""
        try:
            return str(task.get_name())
        except Exception:  # a foreign Task-like object: no label rather than no sample
            return ""

    def _labels_of(self, span: Any) -> span_tracking.SpanLabels:
        """The span labels of ``span`` (worked out once per span and window)."""
        if span is None or self._spans is None:
            return _NO_SPAN
        try:
            span_id = span.get_span_context().span_id
            labels = self._span_labels.get(span_id)
            if labels is None:
                labels = self._span_labels[span_id] = self._spans.labels(span)
            return labels
        except Exception:  # a foreign span type: no labels rather than no sample
            return _NO_SPAN

    def _cell(self, state: ThreadState) -> list[int]:
        """The [count, value] cell of the state's current (labels, stack)."""
        counts = self._counts
        stack = state.stack
        limit = self._max_depth
        key = ((state.name, state.task, state.span_labels),
               tuple(stack) if len(stack) <= limit else tuple(stack[-limit:]))
        cell = counts.get(key)
        if cell is None:
            if len(counts) >= self._max_stacks:
                key = (key[0], (self._locations.overflow_location(),))
                cell = counts.get(key)
            if cell is None:
                cell = counts[key] = [0, 0]
        return cell

    # --- output ----------------------------------------------------------------------------------------

    def take(self, timeout: float = 5.0) -> Snapshot:
        """What was collected since the start (or the previous take), as a :class:`Snapshot`; sampling
        goes on into a new window.

        From another thread while the sampler runs, the sampling thread takes it between two ticks (so
        that the tick itself needs no lock); this waits at most ``timeout`` seconds for that, then takes
        it here (a sampling thread that does not answer, e.g. at interpreter exit, must not lose it).
        """
        loop_ident = self._loop_ident
        if loop_ident is not None and loop_ident != threading.get_ident():
            self._taken.clear()
            self._take_requested = True
            if self._taken.wait(timeout):
                snapshot = self._snapshot
                self._snapshot = None
                assert snapshot is not None
                return snapshot
        self._take_requested = False
        return self._swap()

    def _hand_over(self) -> None:
        """In the sampling thread: answer a take() from another thread."""
        self._take_requested = False
        self._snapshot = self._swap()
        self._taken.set()

    def _swap(self) -> Snapshot:
        """The current window as a Snapshot, and a new window (locations numbered afresh)."""
        now = time.perf_counter_ns()
        end = self._window_end_ns if self._window_end_ns is not None else now
        snapshot = Snapshot(
            mode=self.mode, period_ns=self.interval_ns, start_unix_ns=self._window_unix_ns,
            duration_ns=max(0, end - self._window_ns), locations=self._locations.keys,
            counts=self._counts, comments=list(self._comments),
        )
        self._window_ns = now
        self._window_unix_ns = time.time_ns()
        self._counts = {}
        # Code objects are released with the window: a long-running sampler does not keep every code
        # object it ever saw alive, at the price of walking stacks afresh once per window.
        self._locations = Locations()
        self._span_labels = {}
        for state in list(self._threads.values()):
            state.forget_locations()
        return snapshot

    def encode(self) -> bytes:
        """The profile collected so far, as gzipped pprof (the sampler is done afterwards)."""
        self._done = True
        return encode_pprof(self.take())


def profile(seconds: float, mode: Mode = "cpu", hz: float = 100.0, *,
            stop: threading.Event | None = None, exclude: Collection[int] = ()) -> bytes:
    """Profile this process for ``seconds`` in the calling thread; return gzipped pprof bytes."""
    return Sampler(mode, hz, exclude=exclude).run(seconds, stop)
