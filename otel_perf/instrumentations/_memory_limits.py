"""Where this process's memory limit comes from, and what counts against it: cgroup v2, v1, /proc.

Why this module exists: the memory-pressure monitor (``memory.py``) needs the limit the kernel will
enforce and the usage the kernel weighs against it, and those live in files whose layout differs
between cgroup v2, cgroup v1, hybrid hosts and containers with or without a cgroup namespace. Reading
them is kept apart from the monitor's policy so that every layout can be tested with checked-in fake
trees (``tests/fixtures/memory/``): every path here is taken under an injectable ``root``.

How the cgroup is found: ``/proc/self/cgroup`` names this process's cgroup path per hierarchy
(``0::/path`` for v2, ``N:memory:/path`` for v1) and ``/proc/self/mountinfo`` tells where each hierarchy
is mounted and which part of it the mount shows (a container sees only its own subtree). The binding
limit is the smallest one on the way from the process's cgroup up to the mount, because a parent's
limit applies to all its children; its usage is read in the cgroup that holds that limit, which is the
set of pages the kernel's OOM killer weighs. A cgroup limit of "max" (v2), a huge value (v1 reports
"unlimited" as about 2**63), or any value at or above physical memory does not bind.

Nothing here raises for a missing or unreadable file: the reader answers ``None`` and the caller falls
back to the next source.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Final

__all__ = [
    "Cgroup",
    "find_cgroups",
    "read_psi",
    "system_memory",
]

#: v1 reports "no limit" as PAGE_COUNTER_MAX pages (9223372036854771712 on 4 KiB pages); anything at
#: or above 2**60 bytes is treated as that.
_V1_UNLIMITED: Final = 1 << 60

_MOUNT_ESCAPE: Final = re.compile(r"\\([0-7]{3})")


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read()
    except (OSError, ValueError):
        return None


def _read_int(path: str) -> int | None:
    text = _read(path)
    if text is None:
        return None
    try:
        return int(text.strip())
    except ValueError:
        return None


def _stat_value(path: str, *keys: str) -> int | None:
    """The first of ``keys`` found in a ``memory.stat`` file (``key value`` lines)."""
    text = _read(path)
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


def _under(root: str, path: str) -> str:
    """``path`` (absolute, as the kernel shows it) inside the filesystem ``root``."""
    return os.path.join(root, path.lstrip("/")) if root not in ("", "/") else path


def system_memory(root: str = "/") -> int | None:
    """Physical memory in bytes: ``MemTotal`` of ``/proc/meminfo``, else psutil (other platforms)."""
    text = _read(_under(root, "/proc/meminfo"))
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
    text = _read(path)
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
class Cgroup:
    """One cgroup directory of this process's memory hierarchy, with the files of its version.

    Attributes:
        version: 2 or 1.
        path: the directory (under the filesystem root given to :func:`find_cgroups`).
        top: the directory of the mount; the walk for a binding limit stops there.
    """

    version: int
    path: str
    top: str

    def own_limit(self) -> int | None:
        """This directory's limit in bytes, or None for "max", unlimited, missing or unreadable."""
        if self.version == 2:
            text = _read(os.path.join(self.path, "memory.max"))
            if text is None or text.strip() == "max":
                return None
            try:
                value = int(text.strip())
            except ValueError:
                return None
        else:
            value_or_none = _read_int(os.path.join(self.path, "memory.limit_in_bytes"))
            if value_or_none is None or value_or_none >= _V1_UNLIMITED:
                return None
            value = value_or_none
        return value if value > 0 else None

    def usage(self) -> int | None:
        """The working set: usage minus inactive file cache (what the OOM killer weighs), >= 0."""
        if self.version == 2:
            current = _read_int(os.path.join(self.path, "memory.current"))
            inactive = _stat_value(os.path.join(self.path, "memory.stat"), "inactive_file")
        else:
            current = _read_int(os.path.join(self.path, "memory.usage_in_bytes"))
            inactive = _stat_value(os.path.join(self.path, "memory.stat"),
                                   "total_inactive_file", "inactive_file")
        if current is None:
            return None
        return max(0, current - (inactive or 0))

    def psi_path(self) -> str | None:
        """This cgroup's ``memory.pressure`` (v2 only)."""
        return os.path.join(self.path, "memory.pressure") if self.version == 2 else None

    def parent(self) -> Cgroup | None:
        """The enclosing cgroup, or None at the top of the mount."""
        if os.path.normpath(self.path) == os.path.normpath(self.top):
            return None
        up = os.path.dirname(os.path.normpath(self.path))
        if len(up) < len(os.path.normpath(self.top)):
            return None
        return Cgroup(self.version, up, self.top)

    def binding(self, physical: int | None) -> tuple[Cgroup, int] | None:
        """The cgroup (this one or an ancestor) whose limit binds, and that limit; None if none binds.

        A limit at or above ``physical`` memory does not bind: the machine runs out first.
        """
        best: tuple[Cgroup, int] | None = None
        node: Cgroup | None = self
        while node is not None:
            limit = node.own_limit()
            if limit is not None and (physical is None or limit < physical) and (
                best is None or limit < best[1]
            ):
                best = (node, limit)
            node = node.parent()
        return best


@dataclass(frozen=True)
class _Mount:
    fstype: str
    root: str  # the part of the hierarchy the mount shows
    point: str  # where it is mounted
    options: str


def _unescape(field: str) -> str:
    return _MOUNT_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def _mounts(root: str) -> list[_Mount] | None:
    text = _read(_under(root, "/proc/self/mountinfo"))
    if text is None:
        return None
    mounts = []
    for line in text.splitlines():
        head, sep, tail = line.partition(" - ")
        fields, after = head.split(), tail.split()
        if not sep or len(fields) < 5 or len(after) < 1:
            continue
        if after[0] in ("cgroup", "cgroup2"):
            mounts.append(_Mount(after[0], _unescape(fields[3]), _unescape(fields[4]),
                                 after[2] if len(after) > 2 else ""))
    return mounts


def _membership(root: str) -> tuple[str | None, str | None]:
    """(v2 path, v1 memory path) from ``/proc/self/cgroup``."""
    text = _read(_under(root, "/proc/self/cgroup"))
    if text is None:
        return None, None
    v2 = v1 = None
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            v2 = path.strip()
        elif "memory" in controllers.split(","):
            v1 = path.strip()
    return v2, v1


def _directory(root: str, mount: _Mount, path: str) -> tuple[str, str]:
    """(cgroup directory, mount directory) for cgroup ``path`` in ``mount``, under ``root``."""
    top = _under(root, mount.point)
    mount_root = mount.root.rstrip("/")
    if mount.root == "/" or path == mount_root or path.startswith(mount_root + "/"):
        relative = path[len(mount_root):] if mount.root != "/" else path
        directory = os.path.join(top, relative.lstrip("/")) if relative.strip("/") else top
        if os.path.isdir(directory):
            return directory, top
    # A namespaced container whose /proc/self/cgroup still shows the host's path: the mount is the
    # container's own cgroup.
    return top, top


def find_cgroups(root: str = "/") -> tuple[Cgroup | None, Cgroup | None]:
    """This process's memory cgroups: (v2, v1). Either is None when absent or not found.

    Args:
        root: the filesystem root to read ``/proc`` and ``/sys/fs/cgroup`` under (tests pass a fake tree).
    """
    v2_path, v1_path = _membership(root)
    mounts = _mounts(root)
    if mounts is None:
        # No mountinfo: assume the usual mount points.
        mounts = [
            _Mount("cgroup2", "/", "/sys/fs/cgroup", ""),
            _Mount("cgroup2", "/", "/sys/fs/cgroup/unified", ""),
            _Mount("cgroup", "/", "/sys/fs/cgroup/memory", "memory"),
        ]
    v2: Cgroup | None = None
    v1: Cgroup | None = None
    for mount in mounts:
        if v2 is None and v2_path is not None and mount.fstype == "cgroup2":
            directory, top = _directory(root, mount, v2_path)
            if os.path.isdir(directory) and (
                os.path.exists(os.path.join(directory, "memory.max"))
                or os.path.exists(os.path.join(directory, "memory.pressure"))
                or os.path.exists(os.path.join(directory, "cgroup.controllers"))
            ):
                v2 = Cgroup(2, directory, top)
        if (v1 is None and v1_path is not None and mount.fstype == "cgroup"
                and "memory" in mount.options.split(",")):
            directory, top = _directory(root, mount, v1_path)
            if os.path.isdir(directory):
                v1 = Cgroup(1, directory, top)
    return v2, v1
