"""The memory-pressure monitor: usage against the real limit, a warning and a count when it runs high.

Why this module exists: a Python program in a container is killed by the kernel when its cgroup's
working set reaches ``memory.max``, long before the machine runs out, and nothing in the process says
how close it is. :class:`MemoryMonitor` reads the limit that applies (``OTEL_PERF_MEMORY_LIMIT``, else
the cgroup v2 or v1 limit, else physical memory), the usage the kernel weighs against it, and the
pressure (usage / limit); crossing the threshold logs a warning on the ``otel_perf`` logger, counts an
event and, when enabled, runs a cleanup (``gc.collect()`` and glibc's ``malloc_trim(0)``). Hysteresis
keeps a value hovering at the threshold from firing again and again: pressure must fall below the
threshold minus ``hysteresis`` before it counts as recovered.

Usage::

    from otel_perf import MemoryMonitor

    monitor = MemoryMonitor(threshold=0.8, cleanup=True)
    if monitor.check():          # True while pressure is high
        shed_load()
    freed = monitor.cleanup()    # bytes this process gave back

    # or let otel-perf run one (configure() and opentelemetry-instrument do this):
    from otel_perf.instrumentations.memory import MemoryInstrumentor
    MemoryInstrumentor().instrument(meter_provider=provider)

Emits (``docs/telemetry.md``): ``otel_perf.memory.limit`` (By, with
``otel_perf.memory.limit.source`` = config, cgroup or system), ``otel_perf.memory.usage`` (By),
``otel_perf.memory.pressure`` (1), ``otel_perf.memory.pressure.events`` ({event}, with
``otel_perf.memory.pressure.state`` = high or recovered), ``otel_perf.memory.cleanup.freed`` (By),
``otel_perf.memory.psi`` (1, where readable), and in the root process only
``otel_perf.process_tree.memory.usage`` and ``otel_perf.process_tree.memory.peak`` (By; the largest tree
RSS sampled at every check and collection, and never below any member's own peak). The gauges are
observable: they read the state when metrics are collected. Usage: with a cgroup limit, the cgroup's
working set (``memory.current`` minus ``inactive_file``; v1: ``memory.usage_in_bytes`` minus
``total_inactive_file``); with a configured or system limit, the RSS of this process and its descendants.

Reads ``OTEL_PERF_MEMORY_LIMIT``, ``OTEL_PERF_MEMORY_THRESHOLD``, ``OTEL_PERF_MEMORY_CLEANUP`` and
``OTEL_PERF_MEMORY_CHECK_INTERVAL``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

from opentelemetry.metrics import CallbackOptions, Meter, Observation

try:
    import resource
except ImportError:  # pragma: no cover - Windows
    resource = None  # type: ignore[assignment]

from otel_perf._config import Settings, get_settings, parse_size
from otel_perf._process import is_root_process
from otel_perf._safety import guarded, log_once
from otel_perf._semconv import (
    LIMIT_SOURCE_CGROUP,
    LIMIT_SOURCE_CONFIG,
    LIMIT_SOURCE_SYSTEM,
    MEMORY_LIMIT_SOURCE,
    MEMORY_PRESSURE_STATE,
    PRESSURE_HIGH,
    PRESSURE_RECOVERED,
    MetricSpec,
    metric,
)
from otel_perf.errors import ConfigError
from otel_perf.instrumentations import PerfInstrumentor
from otel_perf.instrumentations._memory_limits import Cgroup, find_cgroups, read_psi, system_memory
from otel_perf.instrumentations._runtime_process import own_peak_rss

__all__ = ["MemoryInstrumentor", "MemoryMonitor", "MemoryReading"]

_logger = logging.getLogger("otel_perf")

_LIMIT: Final = metric("otel_perf.memory.limit")
_USAGE: Final = metric("otel_perf.memory.usage")
_PRESSURE: Final = metric("otel_perf.memory.pressure")
_EVENTS: Final = metric("otel_perf.memory.pressure.events")
_FREED: Final = metric("otel_perf.memory.cleanup.freed")
_PSI: Final = metric("otel_perf.memory.psi")
_TREE_USAGE: Final = metric("otel_perf.process_tree.memory.usage")
_TREE_PEAK: Final = metric("otel_perf.process_tree.memory.peak")

#: Default hysteresis: pressure must fall this far (as a ratio) below the threshold to count as recovered.
DEFAULT_HYSTERESIS: Final = 0.05

#: The observable instruments of one collection share one reading taken at most this long ago, so a
#: collection reads the cgroup files once, not once per metric.
_OBSERVATION_MAX_AGE: Final = 0.2

#: What ``check()`` caches, so that it costs about one file read (the README offers it per request): the
#: limit and the cgroup that sets it are resolved again by a check at most this often (seconds), and by
#: every ``read()`` and metric collection; ``set_limit()`` drops them at once.
_LIMIT_MAX_AGE: Final = 5.0

#: ...and the slow-moving parts of the usage a check weighs, read again at most this often (seconds): the
#: descendants' RSS (this process's own is read at every check) and the cgroup's inactive file cache
#: (``memory.current`` is read at every check). The root process's tree peak is sampled then too.
_SLOW_USAGE_MAX_AGE: Final = 1.0


@dataclass(frozen=True, slots=True)
class _SlowUsage:
    """The parts of the usage ``check()`` reads at most every ``_SLOW_USAGE_MAX_AGE`` seconds."""

    pid: int  # the process that read them (a forked child reads its own)
    cgroup: Cgroup | None  # the binding cgroup they belong to
    inactive: int  # the cgroup's inactive file cache (0 without a cgroup)
    descendants: int | None  # the descendants' RSS, None where the check does not need it
    time: float


@dataclass(frozen=True)
class MemoryReading:
    """One reading of the memory state.

    Attributes:
        limit: the limit in bytes that applies (None only when not even physical memory is known).
        limit_source: where it came from: ``config``, ``cgroup`` or ``system``.
        usage: bytes counted against the limit (cgroup working set, or process-tree RSS).
        pressure: ``usage / limit`` (None without a limit).
        psi: memory PSI "some avg10" as a ratio (0.0-1.0), None where not readable.
        process_tree_usage: RSS of this process and all its descendants, None where not measured.
    """

    limit: int | None
    limit_source: str
    usage: int
    pressure: float | None
    psi: float | None
    process_tree_usage: int | None


def _validate_limit(limit: int | str | None) -> int | None:
    if limit is None:
        return None
    if isinstance(limit, str):
        try:
            return parse_size(limit)
        except ValueError as exc:
            raise ConfigError(f"Expected OTEL_PERF_MEMORY_LIMIT to be {exc}, got {limit!r}") from None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
        raise ConfigError(f"Expected OTEL_PERF_MEMORY_LIMIT to be a number of bytes > 0, got {limit!r}")
    return limit


def _validate_ratio(name: str, value: float, upper: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= upper:
        raise ConfigError(f"Expected {name} to be a ratio between 0 and {upper}, got {value!r}")
    return float(value)


# --- this process ----------------------------------------------------------------------------------

_process: Any = None
_process_pid = 0
_fast_tree: bool | None = None
_PAGE_SIZE: Final = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
# ru_maxrss is in KiB on Linux and in bytes on macOS.
_MAXRSS_SCALE: Final = 1 if sys.platform == "darwin" else 1024


def _this_process() -> Any:
    """psutil's handle of this process (a fresh one after fork)."""
    global _process, _process_pid
    import psutil

    if _process is None or _process_pid != os.getpid():
        _process, _process_pid = psutil.Process(), os.getpid()
    return _process


def _own_rss() -> int:
    return int(_this_process().memory_info().rss)


def _statm_rss(pid: int | str) -> int | None:
    """Resident size of ``pid`` (or ``"self"``) in bytes, from ``statm``: one ``os.open``/``os.read``, about
    half the cost of ``open()`` (benchmarks/instrumentations/test_memory.py, group memory-check)."""
    try:
        fd = os.open(f"/proc/{pid}/statm", os.O_RDONLY)
    except OSError:
        return None  # exited, or not Linux
    try:
        return int(os.read(fd, 256).split()[1]) * _PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return None
    finally:
        os.close(fd)


def _status_rss_and_peak(pid: int) -> tuple[int, int] | None:
    """``(VmRSS, VmHWM)`` of ``pid`` in bytes: its resident size now and the most it has had resident."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            text = f.read()
        rss = int(text.split(b"VmRSS:", 1)[1].split(None, 1)[0]) * 1024
        peak = int(text.split(b"VmHWM:", 1)[1].split(None, 1)[0]) * 1024
    except (OSError, ValueError, IndexError):
        return None  # exited (a zombie has no memory lines), or not Linux
    return rss, max(rss, peak)


def _proc_children(pid: int) -> list[int]:
    children: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return children
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                children.extend(int(child) for child in f.read().split())
        except (OSError, ValueError):
            continue  # the thread or the process ended meanwhile
    return children


def _have_children_files() -> bool:
    pid = os.getpid()
    return os.path.exists(f"/proc/{pid}/task/{pid}/children") and _statm_rss(pid) is not None


def process_tree_rss() -> int:
    """Resident set size of this process plus all its descendants, in bytes."""
    return process_tree_memory()[0]


def process_tree_memory() -> tuple[int, int]:
    """``(rss, member_peak)``: the resident set size of this process plus all its descendants now, and the
    largest peak any member of the tree ever had, in bytes.

    The member peak is what a tree's peak can never be below: this process's own peak as
    ``otel_perf.memory.peak`` reports it (``own_peak_rss``), each live descendant's ``VmHWM``, and the largest
    ``ru_maxrss`` of the descendants that ended and were waited for (``RUSAGE_CHILDREN``).

    On Linux this follows ``/proc/<pid>/task/<tid>/children`` from this process down, so its cost grows
    with the size of the tree, not with the number of processes on the machine (psutil's
    ``children(recursive=True)`` reads every process's ``stat``: 3.8 ms against 0.06 ms on the build
    machine with ~100 processes). Elsewhere, psutil (live descendants' peaks are then not known).
    """
    own, descendants, peak = _tree_parts()
    return own + descendants, peak


def _tree_parts() -> tuple[int, int, int]:
    """``(own rss, descendants' rss, member peak)``: :func:`process_tree_memory` with this process's own
    share apart (``check()`` reads it afresh and the descendants' less often)."""
    global _fast_tree
    if _fast_tree is None:
        _fast_tree = _have_children_files()
    peak = _own_and_reaped_peak()
    if _fast_tree:
        me = os.getpid()
        own = _statm_rss(me) or 0
        descendants = 0
        pending, seen = _proc_children(me), {me}
        while pending:
            pid = pending.pop()
            if pid in seen:
                continue
            seen.add(pid)
            found = _status_rss_and_peak(pid)
            if found is not None:
                descendants += found[0]
                peak = max(peak, found[1])
                pending.extend(_proc_children(pid))
        return own, descendants, peak
    total = _psutil_tree_rss()
    own = _own_rss()
    return own, max(0, total - own), peak


def _own_and_reaped_peak() -> int:
    """This process's own peak (``own_peak_rss``) and the ``ru_maxrss`` of its waited-for descendants, in
    bytes (0 where unknown).

    A child's ``ru_maxrss`` also counts the image it had before ``exec`` (a copy of its parent's), which
    is at most this process's own peak: so it never raises the maximum above a real member's peak.
    """
    if resource is None:
        return 0
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own_peak_rss(), reaped * _MAXRSS_SCALE)


def _psutil_tree_rss() -> int:
    import psutil

    proc = _this_process()
    total = int(proc.memory_info().rss)
    try:
        children = proc.children(recursive=True)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        children = []
    for child in children:
        try:
            total += int(child.memory_info().rss)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue  # it exited (or hid) between listing and reading
    return total


_malloc_trim: Any = None
_malloc_trim_loaded = False


def malloc_trim() -> bool:
    """Ask glibc to return free heap memory to the OS (``malloc_trim(0)``). False where unavailable."""
    global _malloc_trim, _malloc_trim_loaded
    if not _malloc_trim_loaded:
        _malloc_trim_loaded = True
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                _malloc_trim = getattr(libc, "malloc_trim", None)  # glibc only (not musl)
            except OSError:
                _malloc_trim = None
            if _malloc_trim is not None:
                _malloc_trim.argtypes = [ctypes.c_size_t]
                _malloc_trim.restype = ctypes.c_int
    if _malloc_trim is None:
        return False
    _malloc_trim(0)
    return True


# --- the monitor -----------------------------------------------------------------------------------

_running: weakref.WeakSet[MemoryMonitor] = weakref.WeakSet()


class MemoryMonitor:
    """Watches memory usage against the limit that applies; see the module docstring.

    Args:
        limit: the limit in bytes (or a size such as ``"512MiB"``); default ``OTEL_PERF_MEMORY_LIMIT``,
            else detected: cgroup v2 ``memory.max``, cgroup v1 ``memory.limit_in_bytes``, physical memory.
        threshold: pressure (usage / limit) at or above which pressure counts as high; default
            ``OTEL_PERF_MEMORY_THRESHOLD`` (0.8).
        cleanup: run :meth:`cleanup` when pressure turns high; default ``OTEL_PERF_MEMORY_CLEANUP`` (off).
        root: the filesystem root under which ``/proc`` and ``/sys/fs/cgroup`` are read (tests pass a
            fake tree).
        hysteresis: after a crossing, pressure must fall below ``threshold - hysteresis`` to recover.
        settings: settings to take defaults from (default: those in force).
        clock: the monotonic clock that ages a collection's shared reading (tests pass their own).

    Raises:
        ConfigError: an argument is invalid.
    """

    def __init__(
        self,
        limit: int | str | None = None,
        threshold: float | None = None,
        cleanup: bool | None = None,
        root: str = "/",
        *,
        hysteresis: float = DEFAULT_HYSTERESIS,
        settings: Settings | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        current = settings or get_settings()
        self._configured_limit = _validate_limit(limit if limit is not None else current.memory_limit)
        self.threshold = _validate_ratio(
            "OTEL_PERF_MEMORY_THRESHOLD", current.memory_threshold if threshold is None else threshold, 1.0
        )
        if self.threshold <= 0:
            raise ConfigError(f"Expected OTEL_PERF_MEMORY_THRESHOLD to be > 0, got {threshold!r}")
        self.hysteresis = _validate_ratio("hysteresis", hysteresis, self.threshold)
        self.cleanup_enabled = bool(current.memory_cleanup if cleanup is None else cleanup)
        self.root = root
        self._clock = clock
        self._lock = threading.Lock()
        self._high = False
        self._sequence = self._decided = self._last_sequence = 0
        self._tree_peak = 0
        self._last: MemoryReading | None = None
        self._last_time = 0.0
        self._binding: _MeterBinding | None = None
        self._thread: threading.Thread | None = None
        self._stop_event: threading.Event | None = None
        self._interval = current.memory_check_interval
        self._v2, self._v1 = find_cgroups(root)
        self._physical = system_memory(root)
        self._limit_cache: tuple[int | None, str, Cgroup | None] | None = None
        self._limit_time = 0.0
        self._slow: _SlowUsage | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        # A monitor pickles as its configuration (for process pools); the copy starts unbound and idle.
        return (_rebuild, (self._configured_limit, self.threshold, self.cleanup_enabled, self.root,
                           self.hysteresis))

    # configuration
    def set_limit(self, limit: int | str | None) -> None:
        """Use ``limit`` (bytes, or a size such as ``"1GiB"``) from now on; None detects it again."""
        value = _validate_limit(limit)
        with self._lock:
            self._configured_limit = value
            self._last = self._limit_cache = self._slow = None

    @property
    def high(self) -> bool:
        """Whether pressure is high: from the check that crossed the threshold until one that recovered."""
        return self._high

    @property
    def process_tree_peak(self) -> int:
        """High-water mark of the process tree's RSS, in bytes: the largest sum seen by this monitor's
        readings (every check and every collection, the last one at exit), and never below the peak of any
        member of the tree (:func:`process_tree_memory`)."""
        return self._tree_peak

    # reading
    def _limit(self) -> tuple[int | None, str, Cgroup | None]:
        if self._configured_limit is not None:
            return self._configured_limit, LIMIT_SOURCE_CONFIG, None
        for cgroup in (self._v2, self._v1):
            if cgroup is not None:
                binding = cgroup.binding(self._physical)
                if binding is not None:
                    return binding[1], LIMIT_SOURCE_CGROUP, binding[0]
        return self._physical, LIMIT_SOURCE_SYSTEM, None

    def _psi(self) -> float | None:
        if self._v2 is not None:
            path = self._v2.psi_path()
            value = read_psi(path) if path else None
            if value is not None:
                return value
        root = self.root if self.root not in ("", "/") else "/"
        return read_psi(os.path.join(root, "proc/pressure/memory"))

    def read(self) -> MemoryReading:
        """Read limit, usage, pressure and PSI now (no event is counted; see :meth:`check`)."""
        return self._read()[0]

    def _read(self) -> tuple[MemoryReading, int]:
        """A reading and its sequence number (readings run concurrently; the newest one decides)."""
        with self._lock:
            self._sequence += 1
            sequence = self._sequence
        limit, source, cgroup = self._limit()
        self._limit_cache, self._limit_time = (limit, source, cgroup), self._clock()  # fresh for check()
        tree: int | None = None
        usage: int | None = None
        if cgroup is not None:
            usage = cgroup.usage()
            if usage is None:
                log_once(("memory-usage-unreadable", cgroup.path),
                         "otel-perf: cannot read the memory usage of cgroup %s; using the process tree's "
                         "RSS instead", cgroup.path)
        member_peak = 0
        if usage is None or is_root_process():
            tree, member_peak = process_tree_memory()
        if usage is None:
            usage = tree if tree is not None else 0
        pressure = usage / limit if limit else None
        reading = MemoryReading(limit, source, usage, pressure, self._psi(), tree)
        with self._lock:
            if tree is not None:
                self._tree_peak = max(self._tree_peak, tree, member_peak)
        return reading, sequence

    def _observed(self) -> MemoryReading:
        """The reading for a metric collection: taken by its first callback, shared by the others.

        Only collections share readings (a check's reading is never reused), so a collection shows the
        state at that collection, at most ``_OBSERVATION_MAX_AGE`` old.
        """
        with self._lock:
            last, age = self._last, self._clock() - self._last_time
        if last is not None and age < _OBSERVATION_MAX_AGE:
            return last
        reading, sequence = self._read()
        with self._lock:
            if sequence > self._last_sequence:
                self._last, self._last_time, self._last_sequence = reading, self._clock(), sequence
        return reading

    def _check_reading(self) -> tuple[MemoryReading, int]:
        """The reading a check decides on, and its sequence number: the fast-moving usage read afresh (one
        file: the cgroup's ``memory.current``, or this process's ``statm``), the limit and the slow-moving
        parts of the usage as cached (``_LIMIT_MAX_AGE``, ``_SLOW_USAGE_MAX_AGE``). No PSI (a check does not
        use it). With a cgroup's usage, ``process_tree_usage`` is None (the tree is sampled with the
        slow-moving parts)."""
        now = self._clock()
        with self._lock:
            self._sequence += 1
            sequence = self._sequence
        cached = self._limit_cache
        if cached is None or now - self._limit_time >= _LIMIT_MAX_AGE:
            cached = self._limit_cache = self._limit()
            self._limit_time = now
        limit, source, cgroup = cached
        slow = self._slow
        if (slow is None or now - slow.time >= _SLOW_USAGE_MAX_AGE or slow.cgroup is not cgroup
                or slow.pid != os.getpid()):
            slow = self._slow = self._read_slow_usage(cgroup, now)
        usage: int | None = None
        tree: int | None = None
        if cgroup is not None:
            current = cgroup.current()
            if current is not None:
                usage = max(0, current - slow.inactive)
        if usage is None:
            if cgroup is not None:
                log_once(("memory-usage-unreadable", cgroup.path),
                         "otel-perf: cannot read the memory usage of cgroup %s; using the process tree's "
                         "RSS instead", cgroup.path)
            descendants = slow.descendants
            own = _statm_rss("self") if descendants is not None else None
            if own is None or descendants is None:  # not Linux, or not read: the whole tree now
                tree, member_peak = process_tree_memory()
                with self._lock:
                    self._tree_peak = max(self._tree_peak, member_peak)
            else:
                tree = own + descendants
            usage = tree
            with self._lock:
                self._tree_peak = max(self._tree_peak, tree)
        pressure = usage / limit if limit else None
        return MemoryReading(limit, source, usage, pressure, None, tree), sequence

    def _read_slow_usage(self, cgroup: Cgroup | None, now: float) -> _SlowUsage:
        """Read what ``check()`` caches for ``_SLOW_USAGE_MAX_AGE``; the root process samples its tree's
        peak here (with a cgroup's usage, its checks read no RSS)."""
        inactive = (cgroup.inactive_file() or 0) if cgroup is not None else 0
        descendants: int | None = None
        if cgroup is None or is_root_process():
            own, descendants, member_peak = _tree_parts()
            with self._lock:
                self._tree_peak = max(self._tree_peak, own + descendants, member_peak)
        return _SlowUsage(os.getpid(), cgroup, inactive, descendants, now)

    # policy
    def check(self) -> bool:
        """Read the state, count a crossing (with a warning) or a recovery, clean up if enabled.

        Returns:
            True while pressure is high: from the check that finds it at or above the threshold until
            one that finds it below ``threshold - hysteresis``.

        Cost: about one file read (``memory.current``, or this process's ``statm``); what it caches, and
        for how long, is in docs/memory.md ("What a check reads").
        """
        reading, sequence = self._check_reading()
        crossed = recovered = False
        with self._lock:
            if reading.pressure is None or sequence < self._decided:
                # No limit known, or a newer reading (from another thread) already decided.
                return self._high
            self._decided = sequence
            if not self._high and reading.pressure >= self.threshold:
                self._high = crossed = True
            elif self._high and reading.pressure < self.threshold - self.hysteresis:
                self._high, recovered = False, True
            high = self._high
        if crossed:
            _logger.warning(
                "otel-perf: memory pressure high: %d of %d bytes (%.0f%%, limit from %s) crossed the "
                "threshold %.0f%%%s", reading.usage, reading.limit, reading.pressure * 100,
                reading.limit_source, self.threshold * 100, "; cleaning up" if self.cleanup_enabled else "",
            )
            self._count_event(PRESSURE_HIGH)
            if self.cleanup_enabled:
                self.cleanup()
        elif recovered:
            _logger.info("otel-perf: memory pressure recovered: %d of %d bytes (%.0f%%)",
                         reading.usage, reading.limit, reading.pressure * 100)
            self._count_event(PRESSURE_RECOVERED)
        return high

    def cleanup(self) -> int:
        """Run ``gc.collect()`` and (glibc) ``malloc_trim(0)``; return the bytes this process gave back.

        The freed amount is this process's RSS before minus after (never negative): cleanup frees only
        this process's memory, while a cgroup's usage also moves with every other process in it.
        """
        before = _own_rss()
        gc.collect()
        malloc_trim()
        freed = max(0, before - _own_rss())
        binding = self._binding
        if binding is not None:
            binding.freed.add(freed)
        return freed

    def _count_event(self, state: str) -> None:
        binding = self._binding
        if binding is not None:
            binding.events.add(1, {MEMORY_PRESSURE_STATE: state})

    # background checks
    def start(self, interval: float | None = None) -> None:
        """Check now and then every ``interval`` seconds (default ``OTEL_PERF_MEMORY_CHECK_INTERVAL``)
        in a daemon thread, which never delays the program's exit. Starting twice is harmless."""
        with self._lock:
            if interval is not None:
                if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not interval > 0:
                    raise ConfigError("Expected OTEL_PERF_MEMORY_CHECK_INTERVAL to be a number of "
                                      f"seconds > 0, got {interval!r}")
                self._interval = float(interval)
            if self._thread is not None and self._thread.is_alive():
                return
            self._spawn()
        _running.add(self)

    def _spawn(self) -> None:
        stop = threading.Event()
        thread = threading.Thread(target=self._run, args=(stop,), name="otel-perf-memory", daemon=True)
        self._stop_event, self._thread = stop, thread
        thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        """Stop the background checks (waits at most ``timeout`` seconds for a check in progress)."""
        with self._lock:
            stop, thread = self._stop_event, self._thread
            self._stop_event = self._thread = None
        _running.discard(self)
        if stop is not None:
            stop.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    @property
    def running(self) -> bool:
        """Whether background checks are running."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def _run(self, stop: threading.Event) -> None:
        while True:
            with guarded("memory-pressure check"):
                self.check()
            if stop.wait(self._interval):
                return

    def _after_fork_in_child(self) -> None:
        # The child is its own process: fresh lock, its own tree's peak, its own check thread.
        self._lock = threading.Lock()
        self._last = self._slow = None
        self._sequence = self._decided = self._last_sequence = 0
        self._tree_peak = 0
        self._high = False
        if self._thread is not None:
            self._spawn()

    # metrics
    def _bind(self, meter: Meter) -> None:
        binding = _bindings.get(meter)
        if binding is None:
            binding = _bindings[meter] = _MeterBinding(meter)
        binding.monitor = self
        self._binding = binding

    def _unbind(self) -> None:
        binding, self._binding = self._binding, None
        if binding is not None and binding.monitor is self:
            binding.monitor = None


def _rebuild(limit: int | None, threshold: float, cleanup: bool, root: str,
             hysteresis: float) -> MemoryMonitor:
    return MemoryMonitor(limit, threshold, cleanup, root, hysteresis=hysteresis)


def _after_fork_in_child() -> None:
    global _process
    _process = None
    for monitor in list(_running):
        with guarded("memory monitor after fork"):
            monitor._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# --- metrics ---------------------------------------------------------------------------------------


_Read = Callable[[MemoryMonitor, MemoryReading], list[Observation]]


class _MeterBinding:
    """The memory instruments of one meter, reporting whichever monitor is bound to it now.

    The SDK returns the existing instrument (with its first callbacks) when the same name is registered
    again on a meter, so the callbacks read the bound monitor at collection time instead of capturing one:
    instrumenting again after ``uninstrument()`` reports the new monitor, and an unbound meter reports
    nothing.
    """

    def __init__(self, meter: Meter) -> None:
        self.monitor: MemoryMonitor | None = None
        self.events = meter.create_counter(_EVENTS.name, unit=_EVENTS.unit, description=_EVENTS.description)
        self.freed = meter.create_counter(_FREED.name, unit=_FREED.unit, description=_FREED.description)
        ref = weakref.ref(self)

        def observe(spec: MetricSpec, read: _Read) -> Callable[[CallbackOptions], Iterable[Observation]]:
            def callback(options: CallbackOptions) -> Iterable[Observation]:
                binding = ref()
                monitor = binding.monitor if binding is not None else None
                if monitor is None:
                    return ()
                with guarded(f"observe {spec.name}"):
                    return read(monitor, monitor._observed())
                return ()

            return callback

        def limit(_m: MemoryMonitor, r: MemoryReading) -> list[Observation]:
            return [] if r.limit is None else [Observation(r.limit, {MEMORY_LIMIT_SOURCE: r.limit_source})]

        def usage(_m: MemoryMonitor, r: MemoryReading) -> list[Observation]:
            return [Observation(r.usage)]

        def pressure(_m: MemoryMonitor, r: MemoryReading) -> list[Observation]:
            return [] if r.pressure is None else [Observation(r.pressure)]

        def psi(_m: MemoryMonitor, r: MemoryReading) -> list[Observation]:
            return [] if r.psi is None else [Observation(r.psi)]

        def tree_usage(_m: MemoryMonitor, r: MemoryReading) -> list[Observation]:
            if r.process_tree_usage is None or not is_root_process():
                return []
            return [Observation(r.process_tree_usage)]

        def tree_peak(m: MemoryMonitor, r: MemoryReading) -> list[Observation]:
            if r.process_tree_usage is None or not is_root_process():
                return []
            return [Observation(m.process_tree_peak)]

        sums: tuple[tuple[MetricSpec, _Read], ...] = (
            (_LIMIT, limit), (_USAGE, usage), (_TREE_USAGE, tree_usage))
        gauges: tuple[tuple[MetricSpec, _Read], ...] = (
            (_PRESSURE, pressure), (_PSI, psi), (_TREE_PEAK, tree_peak))
        for spec, read in sums:
            meter.create_observable_up_down_counter(spec.name, callbacks=[observe(spec, read)],
                                                    unit=spec.unit, description=spec.description)
        for spec, read in gauges:
            meter.create_observable_gauge(spec.name, callbacks=[observe(spec, read)],
                                          unit=spec.unit, description=spec.description)


_bindings: weakref.WeakKeyDictionary[Meter, _MeterBinding] = weakref.WeakKeyDictionary()


# --- the instrumentor ------------------------------------------------------------------------------


class MemoryInstrumentor(PerfInstrumentor):
    """Runs a :class:`MemoryMonitor` in a daemon thread and reports it through the meter.

    Usage::

        MemoryInstrumentor().instrument(meter_provider=provider)   # or via configure()/the launcher
        MemoryInstrumentor().monitor.check()
        MemoryInstrumentor().uninstrument()

    ``instrument()`` also takes ``root=`` (the filesystem root for ``/proc`` and ``/sys/fs/cgroup``) and
    ``clock=`` (the monitor's monotonic clock), for tests. Emits the metrics listed in the module
    docstring; checks every ``OTEL_PERF_MEMORY_CHECK_INTERVAL`` seconds.
    """

    monitor: MemoryMonitor | None = None

    def _start(self, **kwargs: Any) -> None:
        monitor = MemoryMonitor(root=kwargs.get("root", "/"), settings=self.settings,
                                clock=kwargs.get("clock", time.monotonic))
        monitor._bind(self.meter)
        self.monitor = monitor
        monitor.start(self.settings.memory_check_interval)

    def _stop(self) -> None:
        monitor, self.monitor = self.monitor, None
        if monitor is not None:
            monitor.stop()
            monitor._unbind()
