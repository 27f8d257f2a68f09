"""Where this process's memory limit comes from, and what counts against it: cgroup v2, v1, /proc.

Why this module exists: the memory-pressure monitor (``memory.py``) needs the limit the kernel will
enforce and the usage the kernel weighs against it, and those live in files whose layout differs
between cgroup v2, cgroup v1, hybrid hosts and containers with or without a cgroup namespace. Reading
them is kept apart from the monitor's policy so that every layout can be tested with checked-in fake
trees (``tests/fixtures/memory/``): every path here is taken under an injectable ``root``.

The cgroup is found by ``_cgroups.py`` (the one discovery, shared with the CPU quota). The binding
limit is the smallest one on the way from the process's cgroup up to the mount, because a parent's
limit applies to all its children; its usage is read in the cgroup that holds that limit, which is the
set of pages the kernel's OOM killer weighs. A cgroup limit of "max" (v2), a huge value (v1 reports
"unlimited" as about 2**63), or any value at or above physical memory does not bind.

Nothing here raises for a missing or unreadable file: the reader answers ``None`` and the caller falls
back to the next source.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Final

from otel_perf.instrumentations._cgroups import (
    CgroupDirectory,
    find_cgroup_directories,
    read_file,
    read_file_int,
    under,
)

__all__ = [
    "Cgroup",
    "find_cgroups",
    "read_psi",
    "system_memory",
]

#: v1 reports "no limit" as PAGE_COUNTER_MAX pages (9223372036854771712 on 4 KiB pages); anything at
#: or above 2**60 bytes is treated as that.
_V1_UNLIMITED: Final = 1 << 60

def _stat_value(path: str, *keys: str) -> int | None:
    """The first of ``keys`` found in a ``memory.stat`` file (``key value`` lines)."""
    text = read_file(path)
    if text is None:
        return None
    values: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            values[parts[0]] = parts[1]
    for key in keys:
        if key in values:
            try:
                return int(values[key])
            except ValueError:
                return None
    return None


def system_memory(root: str = "/") -> int | None:
    """Physical memory in bytes: ``MemTotal`` of ``/proc/meminfo``, else psutil (other platforms)."""
    text = read_file(under(root, "/proc/meminfo"))
    if text is not None:
        for line in text.splitlines():
            if line.startswith("MemTotal:"):
                parts = line.split()
                try:
                    kib = int(parts[1])
                except (IndexError, ValueError):
                    break
                return kib * 1024 if kib > 0 else None
    try:
        import psutil

        total = int(psutil.virtual_memory().total)
    except Exception:
        return None
    return total if total > 0 else None


def read_psi(path: str) -> float | None:
    """The "some avg10" of a PSI file (``memory.pressure`` or ``/proc/pressure/memory``) as a ratio."""
    text = read_file(path)
    if text is None:
        return None
    for line in text.splitlines():
        if line.startswith("some "):
            for field in line.split()[1:]:
                key, _, value = field.partition("=")
                if key == "avg10":
                    try:
                        return float(value) / 100.0
                    except ValueError:
                        return None
    return None


@dataclass(frozen=True)
class Cgroup(CgroupDirectory):
    """One cgroup directory of this process's memory hierarchy, with the files of its version.

    Attributes:
        version: 2 or 1.
        path: the directory (under the filesystem root given to :func:`find_cgroups`).
        top: the directory of the mount; the walk for a binding limit stops there.
    """

    def own_limit(self) -> int | None:
        """This directory's limit in bytes, or None for "max", unlimited, missing or unreadable."""
        if self.version == 2:
            text = read_file(os.path.join(self.path, "memory.max"))
            if text is None or text.strip() == "max":
                return None
            try:
                value = int(text.strip())
            except ValueError:
                return None
        else:
            value_or_none = read_file_int(os.path.join(self.path, "memory.limit_in_bytes"))
            if value_or_none is None or value_or_none >= _V1_UNLIMITED:
                return None
            value = value_or_none
        return value if value > 0 else None

    def usage(self) -> int | None:
        """The working set: usage minus inactive file cache (what the OOM killer weighs), >= 0."""
        current = self.current()
        if current is None:
            return None
        return max(0, current - (self.inactive_file() or 0))

    def current(self) -> int | None:
        """The usage before the inactive file cache is taken off (``memory.current``; v1
        ``memory.usage_in_bytes``): the one file a memory check reads each time, with one ``os.open`` and
        ``os.read`` (half the cost of ``open()``)."""
        name = "memory.current" if self.version == 2 else "memory.usage_in_bytes"
        try:
            fd = os.open(os.path.join(self.path, name), os.O_RDONLY)
        except OSError:
            return None
        try:
            return int(os.read(fd, 64))
        except (OSError, ValueError):
            return None
        finally:
            os.close(fd)

    def inactive_file(self) -> int | None:
        """The inactive file cache of ``memory.stat``: usage the kernel reclaims before it kills."""
        if self.version == 2:
            return _stat_value(os.path.join(self.path, "memory.stat"), "inactive_file")
        return _stat_value(os.path.join(self.path, "memory.stat"), "total_inactive_file", "inactive_file")

    def psi_path(self) -> str | None:
        """This cgroup's ``memory.pressure`` (v2 only)."""
        return os.path.join(self.path, "memory.pressure") if self.version == 2 else None

    def binding(self, physical: int | None) -> tuple[Cgroup, int] | None:
        """The cgroup (this one or an ancestor) whose limit binds, and that limit; None if none binds.

        A limit at or above ``physical`` memory does not bind: the machine runs out first.
        """
        best: tuple[Cgroup, int] | None = None
        for node in self.lineage():
            limit = node.own_limit()
            if limit is not None and (physical is None or limit < physical) and (
                best is None or limit < best[1]
            ):
                best = (node, limit)
        return best


def find_cgroups(root: str = "/") -> tuple[Cgroup | None, Cgroup | None]:
    """This process's memory cgroups: (v2, v1). Either is None when absent or not found.

    Args:
        root: the filesystem root to read ``/proc`` and ``/sys/fs/cgroup`` under (tests pass a fake tree).
    """
    v2, v1 = find_cgroup_directories("memory", root)
    return (Cgroup(v2.version, v2.path, v2.top) if v2 is not None else None,
            Cgroup(v1.version, v1.path, v1.top) if v1 is not None else None)
