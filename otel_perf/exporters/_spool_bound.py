"""The spool's byte bound: a cached listing of a spool directory, and eviction of its oldest entries.

Why this module exists: ``OTEL_PERF_SPOOL_MAX_BYTES`` bounds all signals' entries together, and during a
long outage a spool holds tens of thousands of entries; listing them all at every write would make a write
cost the size of the queue. The listing of a directory is kept per process (shared by its spools of that
directory) and rescanned only when it is older than the spool's ``rescan_seconds``; between scans the
entries this process writes are added to it. Eviction deletes the oldest entries first, never one that is
being sent (its file is ``flock``'d), and reports the items of each entry it dropped.
"""

from __future__ import annotations

import fcntl
import os
import stat
import threading
import time
from pathlib import Path

from otel_perf.exporters._spool_format import (
    ALL_SIGNALS,
    ENTRY_FLAGS,
    HEADER,
    SpoolCorruptError,
    is_entry,
    log_skipped,
    read_header,
    reason,
    size_from_name,
)

__all__ = ["evict"]

_BUSY = object()  # an entry another sender holds right now
_GONE = object()  # an entry that no longer exists
_SKIP = object()  # not an entry this process can drop (not a regular file, no permission): left alone


class _Listing:
    """The cached listing of one spool directory, shared by this process's spools of that directory."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.entries: list[tuple[str, str, int]] | None = None  # (name, signal, size), oldest first
        self.total = 0
        self.listed_at = 0.0

    def rescan(self, root: Path) -> None:
        entries: list[tuple[str, str, int]] = []
        total = 0
        for signal in ALL_SIGNALS:
            try:
                with os.scandir(root / signal) as scan:
                    items = [item for item in scan if is_entry(item)]
            except OSError:  # gone, or not a directory: nothing of this signal counts
                continue
            for item in items:
                size = size_from_name(item.name)
                if size is None:  # not named by us: ask the file system
                    try:
                        size = item.stat(follow_symlinks=False).st_size
                    except OSError:
                        continue
                entries.append((item.name, signal, size))
                total += size
        entries.sort()
        self.entries = entries
        self.total = total


_listings: dict[str, _Listing] = {}
_listings_lock = threading.Lock()


def _listing_of(root: Path) -> _Listing:
    key = os.path.realpath(root)
    with _listings_lock:
        listing = _listings.get(key)
        if listing is None:
            listing = _listings[key] = _Listing()
        return listing


def _after_fork_in_child() -> None:
    global _listings_lock
    # Another thread may have held these locks at fork time: the child starts with fresh ones.
    _listings_lock = threading.Lock()
    _listings.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def evict(root: Path, max_bytes: int, rescan_seconds: float,
          added: tuple[str, str, int] | None = None) -> list[tuple[str, int]]:
    """Drop the oldest entries of all signals under ``root`` until they fit ``max_bytes``.

    Within one process the bound is exact; entries other processes wrote count from the next scan on.

    Args:
        root: the spool directory.
        max_bytes: the bound of all signals' entries together.
        rescan_seconds: how long a listing of ``root`` is trusted before the directory is scanned again.
        added: (name, signal, size) of the entry this process just wrote, for the cached listing.

    Returns:
        (signal, items) of every entry dropped.
    """
    listing = _listing_of(root)
    with listing.lock:
        now = time.monotonic()
        if listing.entries is None or now - listing.listed_at > rescan_seconds:
            listing.rescan(root)
            listing.listed_at = now
        elif added is not None:
            listing.entries.append(added)
            listing.total += added[2]
        entries = listing.entries
        assert entries is not None
        if listing.total <= max_bytes:
            return []
        dropped: list[tuple[str, int]] = []
        kept: list[tuple[str, str, int]] = []
        for index, (name, signal, size) in enumerate(entries):
            if listing.total <= max_bytes:
                kept.extend(entries[index:])
                break
            outcome = _drop(root / signal / name)
            if outcome is _BUSY:
                kept.append((name, signal, size))
                continue
            listing.total -= size
            if isinstance(outcome, int):  # else gone (delivered or dropped elsewhere) or skipped
                dropped.append((signal, outcome))
        listing.entries = kept
    return dropped


def _drop(path: Path) -> int | object:
    """Delete one entry unless it is being sent.

    Returns:
        Its items (0 if its header is unreadable), _BUSY, _GONE, or _SKIP when it is not an entry this
        process can delete (it is then neither deleted nor counted).
    """
    try:
        fd = os.open(path, ENTRY_FLAGS)
    except FileNotFoundError:
        return _GONE
    except OSError as exc:
        log_skipped(path, reason(exc))
        return _SKIP
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            log_skipped(path, "it is not a regular file")
            return _SKIP
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return _BUSY
        try:
            items = read_header(os.pread(fd, HEADER.size, 0))[0]
        except (SpoolCorruptError, OSError):
            items = 0
        try:
            os.unlink(path)
        except FileNotFoundError:
            return _GONE
        except OSError as exc:
            log_skipped(path, reason(exc))
            return _SKIP
        return items
    finally:
        os.close(fd)
