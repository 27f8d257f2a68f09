"""Process readings for the runtime metrics: one cheap pass per collection, and the CPUs the process may use.

Why this module exists: the process metrics (CPU time and utilization, memory, threads, file descriptors,
context switches, uptime, peak RSS, C heap) must be read in one pass per collection and cost less than
contrib's ``system_metrics`` process set, which calls psutil once per metric. On Linux one
``getrusage()`` (CPU times, context switches, peak RSS), one read of ``/proc/self/stat`` (threads, virtual
size, RSS) and one listing of ``/proc/self/fd`` cost about 17 us here, against about 65-90 us for the same
values through ``psutil.Process.oneshot()``; elsewhere (or when ``/proc`` cannot be read) psutil is used.

CPU utilization is taken over the CPUs the process may use: the cgroup CPU quota (v2 ``cpu.max``, v1
``cpu.cfs_quota_us``/``cpu.cfs_period_us``, the smallest along the cgroup's ancestors; the cgroup is found
by ``_cgroups.py``, as for the memory limit), capped by the CPU
affinity (``os.sched_getaffinity``), else ``os.cpu_count()``. Every external path hangs off ``root=`` so
tests run against checked-in fake trees.
"""

from __future__ import annotations

import ctypes
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from otel_perf.instrumentations._cgroups import find_cgroup_directories, read_file, under

try:
    import resource
except ImportError:  # pragma: no cover - Windows
    resource = None  # type: ignore[assignment]

__all__ = ["CpuLimit", "HeapReader", "PeakRss", "ProcessSample", "ProcessSampler", "cgroup_cpu_quota", "cpu_limit",
           "own_peak_rss"]

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
# ru_maxrss is in KiB on Linux and in bytes on macOS.
_MAXRSS_SCALE = 1 if sys.platform == "darwin" else 1024


@dataclass(frozen=True, slots=True)
class CpuLimit:
    """How many CPUs the process may use, and where that number came from.

    ``source`` is ``"cgroup"`` (a CPU quota), ``"affinity"`` (``sched_getaffinity``) or ``"cpu_count"``.
    """

    cpus: float
    source: str


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None  # missing or unreadable: this source does not apply


def _quota_v2(directory: Path) -> float | None:
    text = _read_text(directory / "cpu.max")
    if text is None:
        return None
    fields = text.split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    try:
        quota, period = int(fields[0]), int(fields[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _quota_v1(directory: Path) -> float | None:
    quota_text = _read_text(directory / "cpu.cfs_quota_us")
    period_text = _read_text(directory / "cpu.cfs_period_us")
    if quota_text is None or period_text is None:
        return None
    try:
        quota, period = int(quota_text.strip()), int(period_text.strip())
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def cgroup_cpu_quota(root: str | os.PathLike[str] = "/") -> float | None:
    """The cgroup CPU quota of this process in CPUs (``None`` when unlimited or unknown).

    Finds the process's CPU cgroups (``_cgroups.py``, the discovery the memory limit uses too), then takes
    the smallest quota along each cgroup and its ancestors (a child cannot use more than its parent
    allows). Without ``/proc/self/cgroup``, a bare cgroup v2 mount still tells the container's own limit.
    """
    base = os.fspath(root)
    if read_file(under(base, "/proc/self/cgroup")) is None:
        return _quota_v2(Path(under(base, "/sys/fs/cgroup")))
    found: list[float] = []
    for cgroup in find_cgroup_directories("cpu", base):
        if cgroup is None:
            continue
        reader = _quota_v2 if cgroup.version == 2 else _quota_v1
        for directory in cgroup.lineage():
            quota = reader(Path(directory.path))
            if quota is not None:
                found.append(quota)
    return min(found) if found else None


def cpu_limit(root: str | os.PathLike[str] = "/") -> CpuLimit:
    """The CPUs this process may use: the cgroup quota capped by the affinity mask, else the CPU count."""
    affinity: int | None = None
    if hasattr(os, "sched_getaffinity"):
        try:
            affinity = len(os.sched_getaffinity(0))
        except OSError:
            affinity = None
    quota = cgroup_cpu_quota(root)
    if quota is not None and (affinity is None or quota < affinity):
        return CpuLimit(quota, "cgroup")
    if affinity:
        return CpuLimit(float(affinity), "affinity")
    return CpuLimit(float(os.cpu_count() or 1), "cpu_count")


@dataclass(slots=True)
class ProcessSample:
    """Everything the process metrics need, read at one moment (one collection)."""

    monotonic: float
    cpu_user: float
    cpu_system: float
    memory_rss: int
    memory_virtual: int
    memory_peak: int
    threads: int
    fds: int | None
    ctx_voluntary: int
    ctx_involuntary: int


class PeakRss:
    """This process's own peak resident size, in bytes: ``ru_maxrss``, unless that is its parent's.

    Linux keeps ``ru_maxrss`` across ``exec``: a process started by a large parent (a test runner, a
    service of 500 MiB running ``subprocess``) begins with the parent's peak (``vfork``) or its size at the
    fork. ``VmHWM`` in ``/proc/self/status`` is the peak of the current image only, but costs a file read
    (about 11 us against 0.7 us for ``getrusage``). So: at the first reading, when ``ru_maxrss`` is above
    ``VmHWM`` (inherited), ``VmHWM`` is read until ``ru_maxrss`` grows past the inherited value, which only
    this image can have made it do; from then on, and in every process that inherited nothing larger than
    itself, ``ru_maxrss`` alone.

    Args:
        root: filesystem root under which ``proc/self/status`` is read (tests pass a fake tree).
    """

    def __init__(self, root: str | os.PathLike[str] = "/") -> None:
        self._status_path = os.fspath(Path(root) / "proc" / "self" / "status")
        self._pid = 0
        self._inherited = 0  # ru_maxrss (KiB, or bytes on macOS) at the first reading, when it was inflated

    def _hwm(self) -> int | None:
        """``VmHWM`` in bytes, or None where there is no ``/proc``."""
        try:
            fd = os.open(self._status_path, os.O_RDONLY)
        except OSError:
            return None
        try:
            data = os.read(fd, 8192)
        except OSError:
            return None
        finally:
            os.close(fd)
        at = data.find(b"VmHWM:")
        if at < 0:
            return None
        try:
            return int(data[at + 6:data.index(b"kB", at)]) * 1024
        except ValueError:
            return None

    def read(self, maxrss: int | None = None) -> int:
        """The peak in bytes; ``maxrss`` is ``ru_maxrss`` when the caller has just read it."""
        if resource is None:
            return 0
        if maxrss is None:
            maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if self._pid != os.getpid():  # first reading in this process (a forked child starts again)
            self._pid = os.getpid()
            hwm = self._hwm()
            self._inherited = maxrss if hwm is not None and maxrss * _MAXRSS_SCALE > hwm else 0
        if self._inherited and maxrss <= self._inherited:
            hwm = self._hwm()
            if hwm is not None:
                return hwm
        self._inherited = 0
        return maxrss * _MAXRSS_SCALE


_own_peak = PeakRss()


def own_peak_rss() -> int:
    """This process's own peak resident size in bytes (see :class:`PeakRss`); 0 where unknown."""
    return _own_peak.read()


class ProcessSampler:
    """Reads a :class:`ProcessSample`; ``/proc`` and ``getrusage`` on Linux, psutil elsewhere.

    Args:
        root: filesystem root under which ``proc/self/...`` is read (tests pass a fake tree). When
            ``proc/self/stat`` cannot be read there, the sampler uses psutil for the values it holds.
    """

    def __init__(self, root: str | os.PathLike[str] = "/") -> None:
        self._root = Path(root)
        self._stat_path = os.fspath(self._root / "proc" / "self" / "stat")
        self._fd_path = os.fspath(self._root / "proc" / "self" / "fd")
        # Listing the real /proc/self/fd opens one descriptor for the listing itself; a fake tree does not.
        real_fd_dir = os.path.realpath(f"/proc/{os.getpid()}/fd")
        self._fd_bias = 1 if os.path.realpath(self._fd_path) == real_fd_dir else 0
        self._use_proc = self._read_stat() is not None
        self._psutil: psutil.Process | None = None
        self._peak = PeakRss(root)

    @property
    def uses_proc(self) -> bool:
        """Whether ``/proc/self/stat`` is the source (False: psutil)."""
        return self._use_proc

    def _read_stat(self) -> tuple[int, int, int] | None:
        """``(threads, virtual bytes, rss bytes)`` from ``/proc/self/stat``, or None."""
        try:
            fd = os.open(self._stat_path, os.O_RDONLY)
        except OSError:
            return None
        try:
            data = os.read(fd, 4096)
        except OSError:
            return None
        finally:
            os.close(fd)
        # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
        fields = data[data.rfind(b")") + 2:].split()
        try:
            return int(fields[17]), int(fields[20]), int(fields[21]) * _PAGE_SIZE
        except (IndexError, ValueError):
            return None

    def _count_fds(self) -> int | None:
        try:
            return len(os.listdir(self._fd_path)) - self._fd_bias
        except OSError:
            return None

    def _process(self) -> psutil.Process:
        proc = self._psutil
        if proc is None or proc.pid != os.getpid():  # a forked child must not read its parent
            proc = self._psutil = psutil.Process()
        return proc

    def sample(self) -> ProcessSample:
        """Read every process value once."""
        now = time.monotonic()
        stat = self._read_stat() if self._use_proc else None
        if resource is not None:
            usage = resource.getrusage(resource.RUSAGE_SELF)
            user, system = usage.ru_utime, usage.ru_stime
            peak = self._peak.read(usage.ru_maxrss)
            voluntary, involuntary = usage.ru_nvcsw, usage.ru_nivcsw
            if stat is not None:
                threads, virtual, rss = stat
                return ProcessSample(now, user, system, rss, virtual, max(peak, rss), threads,
                                     self._count_fds(), voluntary, involuntary)
        return self._sample_psutil(now)

    def _sample_psutil(self, now: float) -> ProcessSample:
        proc = self._process()
        with proc.oneshot():
            times = proc.cpu_times()
            memory = proc.memory_info()
            threads = proc.num_threads()
            ctx = proc.num_ctx_switches()
            fds: int | None = proc.num_fds() if hasattr(proc, "num_fds") else None
        peak = int(getattr(memory, "peak_wset", 0))
        if resource is not None:
            peak = self._peak.read()
        return ProcessSample(now, times.user, times.system, memory.rss, memory.vms, max(peak, memory.rss),
                             threads, fds, ctx.voluntary, ctx.involuntary)


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
        "keepcost",
    )]


class HeapReader:
    """The C heap through glibc's ``mallinfo2()`` (glibc 2.33+); :attr:`available` is False elsewhere.

    ``allocated`` is what the program holds (``uordblks`` + ``hblkhd``: in-use chunks plus mmapped
    blocks); ``reserved`` is what the heap holds from the OS (``arena`` + ``hblkhd``).
    """

    def __init__(self) -> None:
        self._func: Any = None
        if not sys.platform.startswith("linux"):
            return
        try:
            # The symbols already loaded into the process (libc among them): unlike find_library, this
            # runs no ldconfig subprocess at start-up.
            func = ctypes.CDLL(None).mallinfo2
        except (OSError, AttributeError):
            return  # musl, or glibc older than 2.33
        func.restype = _MallInfo2
        func.argtypes = []
        self._func = func

    @property
    def available(self) -> bool:
        return self._func is not None

    def read(self) -> tuple[int, int] | None:
        """``(allocated, reserved)`` in bytes, or None when mallinfo2 is not available."""
        if self._func is None:
            return None
        info = self._func()
        return info.uordblks + info.hblkhd, info.arena + info.hblkhd
