"""Where this process's cgroups are: one discovery for every controller otel-perf reads (memory, CPU).

Why this module exists: the memory limit (``_memory_limits.py``) and the CPU quota (``_runtime_process.py``)
both live in this process's cgroup, whose place differs between cgroup v2, cgroup v1, hybrid hosts and
containers with or without a cgroup namespace. Finding it is done once, here, for both, and every path is
taken under an injectable ``root`` so each layout is tested with checked-in fake trees
(``tests/fixtures/memory/``, ``tests/fixtures/runtime/``).

How a cgroup is found: ``/proc/self/cgroup`` names this process's cgroup path per hierarchy (``0::/path``
for v2, ``N:memory:/path`` or ``N:cpu,cpuacct:/path`` for v1) and ``/proc/self/mountinfo`` tells where each
hierarchy is mounted and which part of it the mount shows (a container sees only its own subtree). Without
mountinfo the usual mount points are assumed. When the process's own directory is not visible (a container
without a cgroup namespace, whose ``/proc/self/cgroup`` still shows the host's path), the mount itself is
the container's cgroup. A limit binds along the whole way up to the mount (:meth:`CgroupDirectory.lineage`),
because a parent's limit applies to all its children.

Nothing here raises for a missing or unreadable file: the reader answers ``None``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Final, TypeVar

__all__ = ["CgroupDirectory", "find_cgroup_directories", "read_file", "read_file_int", "under"]

_MOUNT_ESCAPE: Final = re.compile(r"\\([0-7]{3})")

_C = TypeVar("_C", bound="CgroupDirectory")


def read_file(path: str) -> str | None:
    """The text of ``path``, or None when it is missing or unreadable."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read()
    except (OSError, ValueError):
        return None


def read_file_int(path: str) -> int | None:
    """The integer ``path`` holds, or None when it is missing, unreadable or not an integer."""
    text = read_file(path)
    if text is None:
        return None
    try:
        return int(text.strip())
    except ValueError:
        return None


def under(root: str, path: str) -> str:
    """``path`` (absolute, as the kernel shows it) inside the filesystem ``root``."""
    return os.path.join(root, path.lstrip("/")) if root not in ("", "/") else path


@dataclass(frozen=True)
class CgroupDirectory:
    """One cgroup directory of this process, in the hierarchy of one controller.

    Attributes:
        version: 2 or 1.
        path: the directory (under the filesystem root given to :func:`find_cgroup_directories`).
        top: the directory of the mount; the walk for a binding limit stops there.
    """

    version: int
    path: str
    top: str

    def parent(self: _C) -> _C | None:
        """The enclosing cgroup, or None at the top of the mount."""
        if os.path.normpath(self.path) == os.path.normpath(self.top):
            return None
        up = os.path.dirname(os.path.normpath(self.path))
        if len(up) < len(os.path.normpath(self.top)):
            return None
        return type(self)(self.version, up, self.top)

    def lineage(self: _C) -> list[_C]:
        """This cgroup and each of its ancestors up to the mount, nearest first."""
        out: list[_C] = []
        node: _C | None = self
        while node is not None:
            out.append(node)
            node = node.parent()
        return out


@dataclass(frozen=True)
class _Mount:
    fstype: str
    root: str  # the part of the hierarchy the mount shows
    point: str  # where it is mounted
    options: str


def _unescape(field: str) -> str:
    return _MOUNT_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def _mounts(root: str) -> list[_Mount] | None:
    text = read_file(under(root, "/proc/self/mountinfo"))
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


def _membership(root: str, controller: str) -> tuple[str | None, tuple[str, str] | None] | None:
    """(v2 path, (v1 controllers, v1 path)) of ``controller`` from ``/proc/self/cgroup``; None without it."""
    text = read_file(under(root, "/proc/self/cgroup"))
    if text is None:
        return None
    v2: str | None = None
    v1: tuple[str, str] | None = None
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            v2 = path.strip()
        elif controller in controllers.split(","):
            v1 = (controllers, path.strip())
    return v2, v1


def _usual_mounts(controller: str, v1_controllers: str | None) -> list[_Mount]:
    """Where the hierarchies usually are, for a host whose mountinfo cannot be read."""
    v1_names = [v1_controllers or controller, controller] + (["cpu,cpuacct"] if controller == "cpu" else [])
    return [
        _Mount("cgroup2", "/", "/sys/fs/cgroup", ""),
        _Mount("cgroup2", "/", "/sys/fs/cgroup/unified", ""),
        *(_Mount("cgroup", "/", f"/sys/fs/cgroup/{name}", name) for name in dict.fromkeys(v1_names)),
    ]


def _directory(root: str, mount: _Mount, path: str) -> tuple[str, str]:
    """(cgroup directory, mount directory) for cgroup ``path`` in ``mount``, under ``root``."""
    top = under(root, mount.point)
    mount_root = mount.root.rstrip("/")
    if mount.root == "/" or path == mount_root or path.startswith(mount_root + "/"):
        relative = path[len(mount_root):] if mount.root != "/" else path
        directory = os.path.join(top, relative.lstrip("/")) if relative.strip("/") else top
        if os.path.isdir(directory):
            return directory, top
    # A namespaced container whose /proc/self/cgroup still shows the host's path: the mount is the
    # container's own cgroup.
    return top, top


def find_cgroup_directories(controller: str, root: str = "/") -> tuple[CgroupDirectory | None,
                                                                        CgroupDirectory | None]:
    """This process's cgroup directories for ``controller`` (``"memory"``, ``"cpu"``): (v2, v1).

    Either is None when absent or not found. A v2 directory counts only where it shows cgroup files
    (``cgroup.controllers``, ``<controller>.max`` or ``<controller>.pressure``), so that a hybrid host's
    cgroup v1 tmpfs at ``/sys/fs/cgroup`` is not taken for the v2 hierarchy.

    Args:
        controller: the cgroup controller whose hierarchy to find.
        root: the filesystem root to read ``/proc`` and ``/sys/fs/cgroup`` under (tests pass a fake tree).
    """
    membership = _membership(root, controller)
    if membership is None:
        return None, None
    v2_path, v1_membership = membership
    mounts = _mounts(root)
    if mounts is None:
        mounts = _usual_mounts(controller, v1_membership[0] if v1_membership else None)
    v2: CgroupDirectory | None = None
    v1: CgroupDirectory | None = None
    for mount in mounts:
        if v2 is None and v2_path is not None and mount.fstype == "cgroup2":
            directory, top = _directory(root, mount, v2_path)
            if os.path.isdir(directory) and any(
                os.path.exists(os.path.join(directory, name))
                for name in ("cgroup.controllers", f"{controller}.max", f"{controller}.pressure")
            ):
                v2 = CgroupDirectory(2, directory, top)
        if (v1 is None and v1_membership is not None and mount.fstype == "cgroup"
                and controller in mount.options.split(",")):
            directory, top = _directory(root, mount, v1_membership[1])
            if os.path.isdir(directory):
                v1 = CgroupDirectory(1, directory, top)
    return v2, v1
