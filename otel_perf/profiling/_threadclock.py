"""Reading another thread's CPU time, by its native thread id (Linux).

Why this module exists: the sampler's CPU mode weights each sample by the CPU time the thread used since
the previous tick, and walks only threads that used some. The clock of another thread is derived from its
*native thread id* (Linux's ``MAKE_THREAD_CPUCLOCK(tid, CPUCLOCK_SCHED)``, what glibc's
``pthread_getcpuclockid`` computes too): a thread id that has exited gives ``EINVAL`` instead of touching
freed memory, which a stale ``pthread_t`` could do. Where that clock is refused,
``/proc/self/task/<tid>/stat`` (utime + stime) is read instead.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable

__all__: list[str] = []

_CPUCLOCK_SCHED = 2
_CPUCLOCK_PERTHREAD = 4
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


# ident -> native id of the thread that forked this process: in a forked child Thread.native_id still
# holds the parent's id (CPython 3.10-3.13), whose CPU clock cannot be read from here.
_native_ids_after_fork: dict[int, int] = {}


def _after_fork_in_child() -> None:
    _native_ids_after_fork.clear()
    _native_ids_after_fork[threading.get_ident()] = threading.get_native_id()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _thread_clock_id(native_id: int) -> int:
    """The CPU clock id of the Linux thread ``native_id`` (include/linux/posix-timers.h)."""
    return ((~native_id) << 3) | _CPUCLOCK_PERTHREAD | _CPUCLOCK_SCHED


def _cpu_ns_clock(native_id: int) -> int | None:
    try:
        return time.clock_gettime_ns(_thread_clock_id(native_id))
    except (OSError, OverflowError):
        return None


def _cpu_ns_proc(native_id: int) -> int | None:
    try:
        with open(f"/proc/self/task/{native_id}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # The command name (field 2) may contain spaces; the fields after its closing parenthesis are fixed.
    fields = data[data.rfind(b")") + 2:].split()
    try:
        ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))
    except (IndexError, ValueError):
        return None
    return ticks * 1_000_000_000 // _CLK_TCK


def _choose_cpu_clock() -> Callable[[int], int | None] | None:
    """The way to read another thread's CPU time here, or None when there is none (then CPU mode
    samples every thread, as wall mode does)."""
    native_id = threading.get_native_id()
    if sys.platform.startswith("linux"):
        if _cpu_ns_clock(native_id) is not None:
            return _cpu_ns_clock
        if _cpu_ns_proc(native_id) is not None:
            return _cpu_ns_proc
    return None
