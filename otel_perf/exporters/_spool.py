"""The on-disk queue behind durable export: atomic entries, in order, shared safely by several processes.

Why this module exists: durable export promises that a batch handed to the exporter survives a backend
outage and a SIGKILL of the program. That needs a queue whose entries appear whole or not at all, whose
order is the order the batches were written, which several processes (a pool's workers, forked servers)
can share without sending an entry twice, and which stays within a byte bound by dropping its oldest
entries, saying how many items it dropped. The exporter (``durable.py``) owns the network; this module
owns the files.

The files (the directory's layout, an entry's format and name) are ``_spool_format.py``'s; the byte bound
(a cached listing, eviction of the oldest entries) is ``_spool_bound.py``'s.

An entry file is ``flock``'d while it is being sent, so eviction never removes an entry that is in
flight, and the directory's ``.replay.lock`` lets exactly one process at a time send a signal's entries.
An entry becomes visible by a rename, and the directory is fsynced after it, so that a power loss cannot
lose an entry the exporter already reported as kept.

Whatever else a spool directory holds never stops the queue: an object named like an entry that is not a
regular file (a directory, a symlink, a FIFO) is skipped and logged once, never opened for reading, never
counted toward the bound nor as dropped; a regular file that fails its checks goes to ``corrupt/`` (or is
deleted when ``corrupt/`` cannot hold it, e.g. a file has that name).
POSIX only (``fcntl``).
"""

from __future__ import annotations

import fcntl
import os
import stat
import threading
import time
import weakref
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from otel_perf._safety import log_once
from otel_perf.exporters._spool_bound import evict
from otel_perf.exporters._spool_format import (
    ALL_SIGNALS,
    CLOEXEC,
    ENTRY_FLAGS,
    HEADER,
    SIGNALS,
    TMP_PREFIX,
    SpoolCorruptError,
    check_directory,
    encode_header,
    is_entry,
    log_skipped,
    next_name,
    pid_alive,
    read_header,
    read_payload,
    reason,
)

__all__ = ["ALL_SIGNALS", "SIGNALS", "Entry", "Spool", "SpoolCorruptError", "check_directory"]

_LOCK_NAME = ".replay.lock"
_CORRUPT_DIR = "corrupt"
#: Corrupt entries kept per signal: enough to diagnose a cause, never a disk filled by a recurring fault
#: (they are outside the byte bound, which counts only entries that can still be sent).
_CORRUPT_KEEP = 16
#: A temporary file this old, or whose writer is gone, is the remains of a crash mid-write.
_STALE_TMP_SECONDS = 300.0

DropCallback = Callable[[str, int, str], None]
"""``on_drop(signal, items, reason)``: called for every entry the spool removes undelivered."""


@dataclass
class Entry:
    """An entry claimed for sending: its file stays ``flock``'d until :meth:`remove` or :meth:`release`."""

    name: str
    path: Path
    items: int
    payload: bytes
    _fd: int
    _spool: Spool

    def remove(self) -> None:
        """The entry was delivered (or dropped): delete it, then let go of it."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        self.release()

    def release(self) -> None:
        """Let go of the entry without deleting it (it will be sent again)."""
        self._spool._close_fd(self._fd)


_spools: weakref.WeakSet[Spool] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # flock belongs to the open file description, which a forked child shares: close the child's copies
    # so the parent's locks end when the parent lets go, not when the child exits.
    for spool in list(_spools):
        spool._forget_inherited_fds()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class Spool:
    """The queue of one signal under ``root``, bounded together with its sibling signals.

    Args:
        root: the spool directory (``OTEL_PERF_SPOOL_DIR``).
        signal: ``traces``, ``metrics``, ``logs`` or ``profiles``: the subdirectory this queue lives in.
        max_bytes: bound of all signals' entries together; the oldest go first when it is exceeded.
        on_drop: told about every entry removed undelivered (its signal, its item count, the reason).
        on_corrupt: told about every entry moved aside (its signal).
        fsync: flush every entry to the disk before it becomes visible (survives power loss, not
            only a killed process).
    """

    def __init__(self, root: str | os.PathLike[str], signal: str, max_bytes: int,
                 on_drop: DropCallback | None = None, on_corrupt: Callable[[str], None] | None = None,
                 fsync: bool = True) -> None:
        if signal not in ALL_SIGNALS:
            raise ValueError(f"Expected signal to be one of {ALL_SIGNALS}, got {signal!r}")
        self.root = Path(root)
        self.signal = signal
        self.directory = self.root / signal
        self.max_bytes = max_bytes
        self._on_drop = on_drop
        self._on_corrupt = on_corrupt
        self._fsync = fsync
        self._fds: set[int] = set()
        self._fds_lock = threading.Lock()
        self._lock_fd: int | None = None
        self._skipped: set[str] = set()  # regular files named like entries that this process cannot open
        #: Seconds a cached listing of the spool is trusted for the bound (see :meth:`enforce_bound`).
        self.rescan_seconds = 2.0
        self.directory.mkdir(parents=True, exist_ok=True)
        _spools.add(self)

    # --- writing ------------------------------------------------------------------------------------

    def append(self, payload: bytes, items: int) -> str:
        """Write one entry atomically (temporary file, fsync, rename) and enforce the bound.

        Returns:
            The entry's name (it may already be gone if the bound dropped it at once).

        Raises:
            OSError: the entry could not be written (nothing was left behind).
        """
        header = encode_header(items, payload)
        name = next_name(len(header) + len(payload))
        tmp = self.directory / f"{TMP_PREFIX}{os.getpid()}-{name}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "OCLOEXEC", 0)
        try:
            fd = os.open(tmp, flags, 0o600)
        except FileNotFoundError:  # the directory was removed under us (a cleanup): make it again
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, flags, 0o600)
        try:
            try:
                os.write(fd, header)
                view = memoryview(payload)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                if self._fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, self.directory / name)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        # The entry is written: what follows must not make the caller count it as lost.
        if self._fsync:
            self._fsync_directory()
        try:
            self.enforce_bound((name, HEADER.size + len(payload)))
        except OSError as exc:
            log_once(("spool-bound", str(self.root), type(exc).__name__),
                     "otel-perf: cannot keep the spool %s within its bound right now (%s); retried at the "
                     "next write", self.root, reason(exc))
        return name

    def _fsync_directory(self) -> None:
        """Make the rename durable: a power loss must not take back an entry reported as kept."""
        try:
            fd = os.open(self.directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            log_once(("spool-dir-fsync", str(self.directory), type(exc).__name__),
                     "otel-perf: cannot fsync the spool directory %s (%s); entries survive a killed "
                     "program but perhaps not a power loss", self.directory, reason(exc))

    def enforce_bound(self, added: tuple[str, int] | None = None) -> int:
        """Drop the oldest entries of all signals until the spool fits ``max_bytes``.

        The listing of the spool is shared by the process's spools of the same directory and cached
        for ``rescan_seconds``, so that a long outage with many entries does not cost a scan of them all
        at every write (``_spool_bound.py``).

        Args:
            added: (name, size) of the entry this process just wrote, for the cached listing.

        Returns:
            How many entries were dropped.
        """
        dropped = evict(self.root, self.max_bytes, self.rescan_seconds,
                        None if added is None else (added[0], self.signal, added[1]))
        if self._on_drop is not None:
            for signal, items in dropped:
                self._on_drop(signal, items, "spool_full")
        return len(dropped)

    # --- reading ------------------------------------------------------------------------------------

    def entries(self) -> list[str]:
        """Names of the complete entries, oldest first (objects that are no entries are skipped)."""
        try:
            with os.scandir(self.directory) as scan:
                names = [item.name for item in scan if is_entry(item)]
        except OSError:
            return []
        skipped = self._skipped
        return sorted(n for n in names if n not in skipped) if skipped else sorted(names)

    def has_entries(self) -> bool:
        """Whether any complete entry is waiting (stops at the first one: cheap with a long queue)."""
        try:
            with os.scandir(self.directory) as scan:
                return any(is_entry(item) and item.name not in self._skipped for item in scan)
        except OSError:
            return False

    def present(self, names: set[str]) -> set[str]:
        """Which of ``names`` are still in the queue."""
        if len(names) <= 8:
            return {n for n in names if (self.directory / n).exists()}
        try:
            return names & set(os.listdir(self.directory))
        except FileNotFoundError:
            return set()

    def claim(self, name: str) -> Entry | None:
        """Lock, read and check one entry for sending.

        Returns:
            The entry, or None when it is gone, corrupt (then moved to ``corrupt/`` and reported) or not an
            entry at all (skipped, logged once). Its descriptor stays open only in the returned entry.

        Raises:
            BlockingIOError: another process holds the entry right now.
        """
        path = self.directory / name
        try:
            fd = os.open(path, ENTRY_FLAGS)
        except FileNotFoundError:
            return None
        except OSError as exc:  # a symlink, no permission, ...: not something this process can send
            self._skip(name, reason(exc))
            return None
        self._track_fd(fd)
        claimed = False
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                self._skip(name, "it is not a regular file")
                return None
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            try:
                if os.stat(path, follow_symlinks=False).st_ino != info.st_ino:
                    return None  # replaced since it was opened
            except FileNotFoundError:
                return None  # removed between open and lock (sent or dropped by another process)
            try:
                items, crc, length = read_header(os.pread(fd, HEADER.size, 0))
                if info.st_size != HEADER.size + length:
                    raise SpoolCorruptError("the file's size does not match its header")
                payload = read_payload(fd, length)
                if zlib.crc32(payload) != crc:
                    raise SpoolCorruptError("payload checksum mismatch")
            except SpoolCorruptError:
                self._move_aside(path)
                return None
            claimed = True
            return Entry(name, path, items, payload, fd, self)
        finally:
            if not claimed:
                self._close_fd(fd)

    def _skip(self, name: str, why: str) -> None:
        self._skipped.add(name)
        log_skipped(self.directory / name, why)

    def _move_aside(self, path: Path) -> None:
        """Keep a corrupt entry in ``corrupt/`` for diagnosis, or delete it when that cannot be done."""
        target_dir = self.directory / _CORRUPT_DIR
        try:
            target_dir.mkdir(exist_ok=True)
            os.rename(path, target_dir / path.name)
        except FileNotFoundError:
            if os.path.lexists(path):  # the directory is there, the entry is: corrupt/ could not be made
                self._delete_corrupt(path, target_dir, "it could not be made")
            else:
                return  # gone meanwhile: handled by another process
        except OSError as exc:
            self._delete_corrupt(path, target_dir, reason(exc))
        else:
            self._prune_corrupt(target_dir)
            log_once(("spool-corrupt", str(target_dir)),
                     "otel-perf: a corrupt %s spool entry was moved to %s (the newest %d are kept there)",
                     self.signal, target_dir, _CORRUPT_KEEP)
        if self._on_corrupt is not None:
            self._on_corrupt(self.signal)

    def _delete_corrupt(self, path: Path, target_dir: Path, why: str) -> None:
        log_once(("spool-corrupt-dir", str(target_dir)),
                 "otel-perf: %s cannot keep corrupt spool entries (%s); corrupt entries are deleted instead",
                 target_dir, why)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            self._skip(path.name, reason(exc))

    @staticmethod
    def _prune_corrupt(target_dir: Path) -> None:
        """Delete all but the newest ``_CORRUPT_KEEP`` corrupt entries (names sort by write time)."""
        try:
            names = sorted(os.listdir(target_dir))
        except OSError:
            return
        for name in names[:-_CORRUPT_KEEP]:
            try:
                os.unlink(target_dir / name)
            except OSError:  # another process pruned it first, or it is no file of ours
                pass

    def remove_stale_temporaries(self) -> int:
        """Delete temporary files left by a crash mid-write (their writer is gone, or they are old)."""
        removed = 0
        now = time.time()
        try:
            names = os.listdir(self.directory)
        except OSError:
            return 0
        for name in names:
            if not name.startswith(TMP_PREFIX):
                continue
            path = self.directory / name
            try:
                pid = int(name[len(TMP_PREFIX):].split("-", 1)[0])
                stale = not pid_alive(pid) or now - path.stat().st_mtime > _STALE_TMP_SECONDS
                if stale:
                    os.unlink(path)
                    removed += 1
            except (ValueError, OSError):
                continue
        return removed

    # --- the replay lock ----------------------------------------------------------------------------

    def try_lock(self) -> bool:
        """Become the one process replaying this signal (non-blocking). Returns False if another is."""
        if self._lock_fd is not None:
            return True
        lock_path = self.directory / _LOCK_NAME
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | CLOEXEC | getattr(os, "O_NOFOLLOW", 0), 0o600)
        except FileNotFoundError:
            return False  # the directory is gone: nothing to replay
        except OSError as exc:
            # Something else has the lock file's name (a directory, a symlink): lock the signal's directory
            # itself, which every process can open, rather than stop replaying.
            log_once(("spool-lock", str(lock_path)),
                     "otel-perf: %s cannot be used as the spool's lock (%s); locking %s instead",
                     lock_path, reason(exc), self.directory)
            try:
                fd = os.open(self.directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | CLOEXEC)
            except OSError:
                return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._track_fd(fd)
        self._lock_fd = fd
        return True

    def unlock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            self._close_fd(fd)

    # --- file descriptors (fork) --------------------------------------------------------------------

    def _track_fd(self, fd: int) -> None:
        with self._fds_lock:
            self._fds.add(fd)

    def _close_fd(self, fd: int) -> None:
        with self._fds_lock:
            if fd not in self._fds:
                return
            self._fds.discard(fd)
        os.close(fd)

    def _forget_inherited_fds(self) -> None:
        # Runs in a freshly forked child: the fds are copies of the parent's; closing them does not
        # release the parent's locks.
        self._fds_lock = threading.Lock()
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds = set()
        self._lock_fd = None
