"""Runtime metrics: the process, the CPython garbage collector, the C heap and asyncio event loops.

Why this module exists: the plan's CPU, memory, thread and GC-pause objectives are read from these
metrics, and contrib's ``system_metrics`` gives neither GC pauses, event-loop lag, peaks nor a CPU
utilization over the CPUs a container may really use, while costing more per collection.

Usage::

    from otel_perf.instrumentations.runtime import RuntimeInstrumentor

    RuntimeInstrumentor().instrument(meter_provider=provider)   # or: opentelemetry-instrument ...
    ...
    RuntimeInstrumentor().uninstrument()

Emits (``docs/telemetry.md``): ``process.cpu.time``, ``process.cpu.utilization`` (``cpu.mode``),
``process.memory.usage``, ``process.memory.virtual``, ``process.thread.count``,
``process.unix.file_descriptor.count``, ``process.context_switches`` (``process.context_switch.type``),
``process.uptime``, ``cpython.gc.collections``, ``cpython.gc.collected_objects``,
``cpython.gc.uncollectable_objects``, ``otel_perf.gc.pause.duration``, ``otel_perf.gc.pause.max``
(``cpython.gc.generation``), ``otel_perf.memory.peak``, ``otel_perf.thread.peak``,
``otel_perf.heap.allocated``, ``otel_perf.heap.reserved`` (glibc only), ``otel_perf.python.allocated_blocks``,
``otel_perf.asyncio.task.count`` and ``otel_perf.eventloop.lag``.

Reads ``OTEL_PERF_EVENTLOOP_LAG_INTERVAL`` (seconds between event-loop probes) and the master switch
``OTEL_PERF_ENABLED``. ``instrument(root=...)`` points the ``/proc`` and cgroup reads at another tree.

Next to contrib's ``opentelemetry-instrumentation-system-metrics``, each metric name comes from one scope:
the names system-metrics reports (``process.cpu.time``, ``process.cpu.utilization``,
``process.context_switches``, ``process.memory.usage``, ``process.memory.virtual``,
``process.thread.count`` and the three ``cpython.gc.*``, unless its configuration leaves them out) are
not reported by otel-perf while system-metrics is instrumented (``_runtime_system_metrics``).

All values are read in one pass per collection: the first of these instruments the SDK calls (it calls
them in the order they were created) takes a fresh reading; the others reuse it. After ``os.fork()`` the
child reports its own process: CPU, uptime, GC counts, peaks and probes start again from the fork.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import psutil
from opentelemetry.metrics import CallbackOptions, Meter, Observation

from otel_perf._safety import guarded
from otel_perf._semconv import (
    CPU_MODE,
    CPYTHON_GC_GENERATION,
    METRICS,
    PROCESS_CONTEXT_SWITCH_TYPE,
    MetricSpec,
)
from otel_perf.instrumentations import PerfInstrumentor
from otel_perf.instrumentations._runtime_eventloop import EventLoopMonitor
from otel_perf.instrumentations._runtime_gc import GENERATIONS, GcPauseMonitor
from otel_perf.instrumentations._runtime_process import (
    CpuLimit,
    HeapReader,
    ProcessSample,
    ProcessSampler,
    cpu_limit,
)
from otel_perf.instrumentations._runtime_system_metrics import SHARED_NAMES, reported_by_system_metrics
from otel_perf.instrumentations._runtime_threads import ThreadPeak

__all__ = ["RuntimeInstrumentor"]

# A reading older than this is not reused by a later callback (another reader's collection, or an SDK
# that calls the callbacks in another order); within one SDK collection all callbacks run well inside it.
_STALE_SECONDS = 1.0
# The cgroup quota and affinity rarely change; re-read them at most this often.
_CPU_LIMIT_TTL_SECONDS = 60.0

_USER = {CPU_MODE: "user"}
_SYSTEM = {CPU_MODE: "system"}
_VOLUNTARY = {PROCESS_CONTEXT_SWITCH_TYPE: "voluntary"}
_INVOLUNTARY = {PROCESS_CONTEXT_SWITCH_TYPE: "involuntary"}
_GENERATION_ATTRS = tuple({CPYTHON_GC_GENERATION: g} for g in GENERATIONS)


@dataclass(slots=True)
class _Reading:
    """One collection's values."""

    taken: float
    process: ProcessSample
    utilization: tuple[float, float]
    uptime: float
    gc_stats: list[tuple[int, int, int]]
    pause_max: list[float]
    heap: tuple[int, int] | None
    allocated_blocks: int
    thread_peak: int
    tasks: int


def _process_start_time() -> float:
    """When this process started, on the ``time.time()`` clock.

    psutil's ``create_time()`` adds the start (in clock ticks since boot) to ``btime`` of /proc/stat, which the
    kernel truncates to whole seconds: up to a second early, so ``process.uptime`` of a young process was
    up to a second too long. Measured against the boot clock itself (``CLOCK_BOOTTIME``, what the start
    ticks count on), the age is exact to a tick.
    """
    try:
        with open("/proc/self/stat", "rb") as f:
            stat = f.read()
        ticks = int(stat[stat.rfind(b")") + 2:].split()[19])  # field 22, starttime
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
        return time.time() - max(0.0, age)
    except (OSError, ValueError, IndexError, AttributeError):  # not Linux: psutil's reading
        return psutil.Process().create_time()


class _Collector:
    """Takes readings for one instrumentation session and keeps the baselines deltas need."""

    def __init__(self, meter: Meter, root: str, gc_monitor: GcPauseMonitor, loops: EventLoopMonitor,
                 threads: ThreadPeak) -> None:
        self.meter = meter
        self.root = root
        self.gc_monitor = gc_monitor
        self.loops = loops
        self.threads = threads
        self.sampler = ProcessSampler(root)
        self.heap = HeapReader()
        self.yielded: frozenset[str] = frozenset()  # names system-metrics reports (to this meter's provider)
        self._limit = cpu_limit(root)
        self._limit_read = time.monotonic()
        self.start_time = _process_start_time()
        self._gc_base: list[tuple[int, int, int]] = [(0, 0, 0) for _ in GENERATIONS]
        self._previous: ProcessSample = self.sampler.sample()
        self.reading: _Reading | None = None
        self.readings_taken = 0  # tests check "one pass per collection" with it
        # Two readers (say OTLP and Prometheus) may collect at once from their own threads: one reading
        # at a time keeps the utilization baseline and the pause-max window consistent.
        self._lock = threading.Lock()

    @property
    def limit(self) -> CpuLimit:
        now = time.monotonic()
        if now - self._limit_read > _CPU_LIMIT_TTL_SECONDS:
            self._limit, self._limit_read = cpu_limit(self.root), now
        return self._limit

    def refresh(self) -> _Reading:
        with self._lock:
            return self._refresh()

    def _refresh(self) -> _Reading:
        sample = self.sampler.sample()
        previous, self._previous = self._previous, sample
        elapsed = sample.monotonic - previous.monotonic
        capacity = elapsed * self.limit.cpus
        if capacity > 0:
            utilization = (max(0.0, (sample.cpu_user - previous.cpu_user) / capacity),
                           max(0.0, (sample.cpu_system - previous.cpu_system) / capacity))
        else:
            utilization = self.reading.utilization if self.reading is not None else (0.0, 0.0)
        stats = gc.get_stats()
        gc_stats = [(s["collections"] - b[0], s["collected"] - b[1], s["uncollectable"] - b[2])
                    for s, b in zip(stats, self._gc_base, strict=False)]
        self.reading = reading = _Reading(
            taken=time.monotonic(),
            process=sample,
            utilization=utilization,
            uptime=max(0.0, time.time() - self.start_time),
            gc_stats=gc_stats,
            pause_max=self.gc_monitor.take_max(),
            heap=self.heap.read(),
            allocated_blocks=sys.getallocatedblocks(),
            thread_peak=self.threads.observe(),
            tasks=self.loops.task_count(),
        )
        self.readings_taken += 1
        return reading

    def current(self) -> _Reading:
        reading = self.reading
        if reading is None or time.monotonic() - reading.taken > _STALE_SECONDS:
            reading = self.refresh()
        return reading

    def after_fork_in_child(self) -> None:
        # The child's getrusage starts at zero and its life starts now; its GC counts start from here.
        # A lock held by a parent thread at fork time would stay held: replace it.
        self._lock = threading.Lock()
        now = time.monotonic()
        self.start_time = time.time()
        self.reading = None
        self._previous = ProcessSample(now, 0.0, 0.0, 0, 0, 0, 0, None, 0, 0)
        self._gc_base = [(s["collections"], s["collected"], s["uncollectable"]) for s in gc.get_stats()]
        self.gc_monitor.take_max()
        self.threads.after_fork_in_child()
        self.loops.after_fork_in_child()


Observe = Callable[[_Reading], Iterable[Observation]]


def _gc_observer(index: int) -> Observe:
    return lambda r: [Observation(stats[index], attrs)
                      for stats, attrs in zip(r.gc_stats, _GENERATION_ATTRS, strict=False)]


def _fds(r: _Reading) -> Iterable[Observation]:
    return [] if r.process.fds is None else [Observation(r.process.fds)]


def _heap(index: int) -> Observe:
    return lambda r: [] if r.heap is None else [Observation(r.heap[index])]


# In creation order: the first one takes the collection's reading.
_OBSERVERS: dict[str, Observe] = {
    "process.cpu.time": lambda r: [Observation(r.process.cpu_user, _USER),
                                   Observation(r.process.cpu_system, _SYSTEM)],
    "process.cpu.utilization": lambda r: [Observation(r.utilization[0], _USER),
                                          Observation(r.utilization[1], _SYSTEM)],
    "process.memory.usage": lambda r: [Observation(r.process.memory_rss)],
    "process.memory.virtual": lambda r: [Observation(r.process.memory_virtual)],
    "process.thread.count": lambda r: [Observation(r.process.threads)],
    "process.unix.file_descriptor.count": _fds,
    "process.context_switches": lambda r: [Observation(r.process.ctx_voluntary, _VOLUNTARY),
                                           Observation(r.process.ctx_involuntary, _INVOLUNTARY)],
    "process.uptime": lambda r: [Observation(r.uptime)],
    "cpython.gc.collections": _gc_observer(0),
    "cpython.gc.collected_objects": _gc_observer(1),
    "cpython.gc.uncollectable_objects": _gc_observer(2),
    "otel_perf.gc.pause.max": lambda r: [Observation(v, a)
                                         for v, a in zip(r.pause_max, _GENERATION_ATTRS, strict=False)],
    "otel_perf.memory.peak": lambda r: [Observation(r.process.memory_peak)],
    "otel_perf.thread.peak": lambda r: [Observation(r.thread_peak)],
    "otel_perf.heap.allocated": _heap(0),
    "otel_perf.heap.reserved": _heap(1),
    "otel_perf.python.allocated_blocks": lambda r: [Observation(r.allocated_blocks)],
    "otel_perf.asyncio.task.count": lambda r: [Observation(r.tasks)],
}
_HEAP_METRICS = ("otel_perf.heap.allocated", "otel_perf.heap.reserved")
_SPECS = {spec.name: spec for spec in METRICS if spec.group == "runtime"}

_collector: _Collector | None = None  # the instrumented session, if any
_registered: weakref.WeakKeyDictionary[Meter, bool] = weakref.WeakKeyDictionary()


def _make_callback(meter: Meter, name: str, observe: Observe,
                   fresh: bool) -> Callable[[CallbackOptions], Iterable[Observation]]:
    # The SDK keeps the first instrument made under a name on a meter: callbacks look up the current
    # session rather than capture one, so instrument -> uninstrument -> instrument on one provider works,
    # and report only to the meter the session was instrumented with.
    shared = name in SHARED_NAMES

    def callback(options: CallbackOptions) -> Iterable[Observation]:
        collector = _collector
        if collector is None or collector.meter is not meter:
            return ()
        with guarded("runtime metrics collection"):
            if fresh:  # the collection's first callback: the reading, and which names are system-metrics'
                reading = collector.refresh()
                collector.yielded = reported_by_system_metrics(meter)
            else:
                reading = collector.current()
            if shared and name in collector.yielded:
                return ()  # one scope per name: system-metrics reports this one
            return observe(reading)
        return ()

    return callback


def _register_instruments(meter: Meter, heap_available: bool) -> None:
    if meter in _registered:
        return
    _registered[meter] = True
    first = True
    for name, observe in _OBSERVERS.items():
        if name in _HEAP_METRICS and not heap_available:
            continue  # "absent elsewhere": no instrument at all without mallinfo2
        spec: MetricSpec = _SPECS[name]
        callbacks = [_make_callback(meter, name, observe, first)]
        first = False
        create: Any = {
            "counter": meter.create_observable_counter,
            "updowncounter": meter.create_observable_up_down_counter,
            "gauge": meter.create_observable_gauge,
        }[spec.instrument]
        create(spec.name, callbacks=callbacks, unit=spec.unit, description=spec.description)


class RuntimeInstrumentor(PerfInstrumentor):
    """Process, GC, C-heap and asyncio metrics (entry point ``otel_perf_runtime``).

    Usage::

        RuntimeInstrumentor().instrument(meter_provider=provider)

    Keyword arguments of ``instrument()``: ``meter_provider``, ``settings`` (see
    :class:`~otel_perf.instrumentations.PerfInstrumentor`), and ``root`` (default ``"/"``), the
    filesystem root for ``/proc`` and ``/sys/fs/cgroup`` reads.
    """

    _collector: _Collector | None = None
    _gc: GcPauseMonitor | None = None
    _loops: EventLoopMonitor | None = None
    _threads: ThreadPeak | None = None

    def _start(self, **kwargs: Any) -> None:
        global _collector
        root = os.fspath(kwargs.get("root") or "/")
        self._gc = GcPauseMonitor()
        self._loops = EventLoopMonitor(self.settings.eventloop_lag_interval)
        self._threads = ThreadPeak()
        self._threads.start()
        self._gc.histogram.bind(self.meter)
        self._loops.histogram.bind(self.meter)
        collector = _Collector(self.meter, root, self._gc, self._loops, self._threads)
        _register_instruments(self.meter, collector.heap.available)
        self._gc.take_max()
        self._gc.start()
        self._loops.start()
        self._collector = _collector = collector

    def _stop(self) -> None:
        global _collector
        if self._collector is not None and _collector is self._collector:
            _collector = None
        self._collector = None
        if self._gc is not None:
            self._gc.stop()
            self._gc.histogram.unbind(self.meter)
        if self._loops is not None:
            self._loops.stop()
            self._loops.histogram.unbind(self.meter)
        if self._threads is not None:
            self._threads.stop()
        self._gc = self._loops = self._threads = None


def _after_fork_in_child() -> None:
    collector = _collector
    if collector is not None:
        collector.after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
