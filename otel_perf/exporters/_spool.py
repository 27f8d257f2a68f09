"""The on-disk queue behind durable export: atomic entries, in order, shared safely by several processes.

Why this module exists: durable export promises that a batch handed to the exporter survives a backend
outage and a SIGKILL of the program. That needs a queue whose entries appear whole or not at all, whose
order is the order the batches were written, which several processes (a pool's workers, forked servers)
can share without sending an entry twice, and which stays within a byte bound by dropping its oldest
entries, saying how many items it dropped. The exporter (``durable.py``) owns the network; this module
owns the files.

Layout under the spool directory (``OTEL_PERF_SPOOL_DIR``)::

    <signal>/<time_ns>-<pid>-<seq>-<size>.otlp   one entry: header + one encoded OTLP export request
                                                 (signal: traces, metrics, logs, profiles)
    <signal>/.tmp-<pid>-<name>                   an entry being written (renamed into place when complete)
    <signal>/.replay.lock                        flock'd by the one process replaying this signal right now
    <signal>/corrupt/                            entries that failed their checks, moved aside (the
                                                 newest _CORRUPT_KEEP per signal, kept for diagnosis)

Entry names sort by time, then pid, then a per-process sequence number, so a plain sort is the replay
order. An entry file is ``flock``'d while it is being sent, so eviction never removes an entry that is in
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
import struct
import threading
import time
import weakref
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from otel_perf._safety import log_once

__all__ = ["ALL_SIGNALS", "SIGNALS", "Entry", "Spool", "SpoolCorruptError", "check_directory"]

#: The signals whose directories every spool has (made and checked up front).
SIGNALS = ("traces", "metrics", "logs")
#: Every signal a spool holds: profiles (continuous profiling, off by default) get their directory when
#: their exporter starts.
ALL_SIGNALS = (*SIGNALS, "profiles")

_MAGIC = b"OPSP"
_VERSION = 1
# magic, version, item count, crc32 of the payload, payload length
_HEADER = struct.Struct(">4sBIIQ")
_SUFFIX = ".otlp"
_TMP_PREFIX = ".tmp-"
_LOCK_NAME = ".replay.lock"
_CORRUPT_DIR = "corrupt"
#: Corrupt entries kept per signal: enough to diagnose a cause, never a disk filled by a recurring fault
#: (they are outside the byte bound, which counts only entries that can still be sent).
_CORRUPT_KEEP = 16
#: A temporary file this old, or whose writer is gone, is the remains of a crash mid-write.
_STALE_TMP_SECONDS = 300.0

_BUSY = object()  # an entry another sender holds right now
_GONE = object()  # an entry that no longer exists
_SKIP = object()  # not an entry this process can drop (not a regular file, no permission): left alone

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
# Never follow a symlink out of the spool, never block on a FIFO named like an entry.
_ENTRY_FLAGS = os.O_RDONLY | _CLOEXEC | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)

DropCallback = Callable[[str, int, str], None]
"""``on_drop(signal, items, reason)``: called for every entry the spool removes undelivered."""


class SpoolCorruptError(ValueError):
    """An entry failed its checks (bad magic, truncated, checksum mismatch)."""


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


_last_ns = 0
_seq = 0
_name_lock = threading.Lock()


def _next_name(size: int) -> str:
    """A name that sorts after every name this process made before (even if the wall clock steps back).

    It ends with the entry's size in bytes, so the bound can be kept from a directory listing alone.
    """
    global _last_ns, _seq
    with _name_lock:
        now = max(time.time_ns(), _last_ns + 1)
        _last_ns = now
        _seq += 1
        return f"{now:020d}-{os.getpid():010d}-{_seq:010d}-{size}{_SUFFIX}"


def _size_from_name(name: str) -> int | None:
    parts = name[:-len(_SUFFIX)].split("-")
    if len(parts) != 4 or not parts[3].isdigit():
        return None
    return int(parts[3])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_entry(item: os.DirEntry[str]) -> bool:
    """Whether a directory item is a complete entry: named like one and a regular file.

    Anything else named like an entry (a directory, a symlink, a FIFO) is skipped, and logged once.
    """
    name = item.name
    if not name.endswith(_SUFFIX) or name.startswith("."):
        return False
    try:
        regular = item.is_file(follow_symlinks=False)
    except OSError:
        regular = False
    if not regular:
        _log_skipped(item.path, "it is not a regular file")
    return regular


def _log_skipped(path: str | os.PathLike[str], why: str) -> None:
    log_once(("spool-skipped", os.fspath(path)),
             "otel-perf: %s in the spool is skipped (%s): it is neither sent nor counted toward the spool's "
             "bound. Move it out of the spool directory.", os.fspath(path), why)


def _reason(exc: OSError) -> str:
    """A one-line reason for a failed file-system operation, naming the path."""
    where = f": {exc.filename}" if exc.filename else ""
    if isinstance(exc, FileExistsError):
        return f"exists and is not a directory{where}"
    return f"{exc.strerror or exc}{where}"


def check_directory(root: str | os.PathLike[str], *, create: bool = True) -> str | None:
    """Why ``root`` cannot hold a spool, or None when it can.

    Args:
        root: the spool directory (``OTEL_PERF_SPOOL_DIR``).
        create: make the directory and its signal subdirectories and write (then remove) a file in each,
            as the spool will; without it, only look (``otel-perf doctor`` changes nothing).
    """
    directory = Path(root)
    if create:
        try:
            for signal in SIGNALS:
                (directory / signal).mkdir(parents=True, exist_ok=True)
                probe = directory / signal / f"{_TMP_PREFIX}{os.getpid()}-probe"
                os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _CLOEXEC, 0o600))
                os.unlink(probe)
        except OSError as exc:
            return _reason(exc)
        return None
    paths = [directory, *(directory / signal for signal in SIGNALS)]
    existing = [path for path in paths if os.path.lexists(path)]
    if not existing:  # it would be made: the nearest existing ancestor must be a writable directory
        parent = directory.absolute().parent
        while not os.path.lexists(parent) and parent != parent.parent:
            parent = parent.parent
        existing = [parent]
    for path in existing:
        if not path.is_dir():
            return f"not a directory: {path}"
        if not os.access(path, os.W_OK | os.X_OK):
            return f"not writable: {path}"
    return None


def read_header(data: bytes) -> tuple[int, int, int]:
    """(items, crc32, payload length) of an entry's first bytes. Raises SpoolCorruptError."""
    if len(data) < _HEADER.size:
        raise SpoolCorruptError("truncated header")
    magic, version, items, crc, length = _HEADER.unpack_from(data)
    if magic != _MAGIC or version != _VERSION:
        raise SpoolCorruptError("not a spool entry")
    return items, crc, length


_spools: weakref.WeakSet[Spool] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    global _listings_lock
    # Another thread may have held these locks at fork time: the child starts with fresh ones.
    _listings_lock = threading.Lock()
    _listings.clear()
    # flock belongs to the open file description, which a forked child shares: close the child's copies
    # so the parent's locks end when the parent lets go, not when the child exits.
    for spool in list(_spools):
        spool._forget_inherited_fds()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


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
                    items = [item for item in scan if _is_entry(item)]
            except OSError:  # gone, or not a directory: nothing of this signal counts
                continue
            for item in items:
                size = _size_from_name(item.name)
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
        header = _HEADER.pack(_MAGIC, _VERSION, items, zlib.crc32(payload), len(payload))
        name = _next_name(len(header) + len(payload))
        tmp = self.directory / f"{_TMP_PREFIX}{os.getpid()}-{name}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
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
            self.enforce_bound((name, _HEADER.size + len(payload)))
        except OSError as exc:
            log_once(("spool-bound", str(self.root), type(exc).__name__),
                     "otel-perf: cannot keep the spool %s within its bound right now (%s); retried at the "
                     "next write", self.root, _reason(exc))
        return name

    def _fsync_directory(self) -> None:
        """Make the rename durable: a power loss must not take back an entry reported as kept."""
        try:
            fd = os.open(self.directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            log_once(("spool-dir-fsync", str(self.directory), type(exc).__name__),
                     "otel-perf: cannot fsync the spool directory %s (%s); entries survive a killed "
                     "program but perhaps not a power loss", self.directory, _reason(exc))

    def enforce_bound(self, added: tuple[str, int] | None = None) -> int:
        """Drop the oldest entries of all signals until the spool fits ``max_bytes``.

        The listing of the spool is shared by the process's spools of the same directory and cached
        for ``rescan_seconds``, so that a long outage with many entries does not cost a scan of them all
        at every write: within one process the bound is exact; entries other processes wrote count from
        the next scan on.

        Args:
            added: (name, size) of the entry this process just wrote, for the cached listing.

        Returns:
            How many entries were dropped.
        """
        listing = _listing_of(self.root)
        with listing.lock:
            now = time.monotonic()
            if listing.entries is None or now - listing.listed_at > self.rescan_seconds:
                listing.rescan(self.root)
                listing.listed_at = now
            elif added is not None:
                listing.entries.append((added[0], self.signal, added[1]))
                listing.total += added[1]
            entries = listing.entries
            assert entries is not None
            if listing.total <= self.max_bytes:
                return 0
            dropped: list[tuple[str, int]] = []
            kept: list[tuple[str, str, int]] = []
            for index, (name, signal, size) in enumerate(entries):
                if listing.total <= self.max_bytes:
                    kept.extend(entries[index:])
                    break
                outcome = self._drop(self.root / signal / name)
                if outcome is _BUSY:
                    kept.append((name, signal, size))
                    continue
                listing.total -= size
                if isinstance(outcome, int):  # else gone (delivered or dropped elsewhere) or skipped
                    dropped.append((signal, outcome))
            listing.entries = kept
        if self._on_drop is not None:
            for signal, items in dropped:
                self._on_drop(signal, items, "spool_full")
        return len(dropped)

    def _drop(self, path: Path) -> int | object:
        """Delete one entry unless it is being sent.

        Returns:
            Its items (0 if its header is unreadable), _BUSY, _GONE, or _SKIP when it is not an entry this
            process can delete (it is then neither deleted nor counted).
        """
        try:
            fd = os.open(path, _ENTRY_FLAGS)
        except FileNotFoundError:
            return _GONE
        except OSError as exc:
            _log_skipped(path, _reason(exc))
            return _SKIP
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                _log_skipped(path, "it is not a regular file")
                return _SKIP
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return _BUSY
            try:
                items = read_header(os.pread(fd, _HEADER.size, 0))[0]
            except (SpoolCorruptError, OSError):
                items = 0
            try:
                os.unlink(path)
            except FileNotFoundError:
                return _GONE
            except OSError as exc:
                _log_skipped(path, _reason(exc))
                return _SKIP
            return items
        finally:
            os.close(fd)

    # --- reading ------------------------------------------------------------------------------------

    def entries(self) -> list[str]:
        """Names of the complete entries, oldest first (objects that are no entries are skipped)."""
        try:
            with os.scandir(self.directory) as scan:
                names = [item.name for item in scan if _is_entry(item)]
        except OSError:
            return []
        skipped = self._skipped
        return sorted(n for n in names if n not in skipped) if skipped else sorted(names)

    def has_entries(self) -> bool:
        """Whether any complete entry is waiting (stops at the first one: cheap with a long queue)."""
        try:
            with os.scandir(self.directory) as scan:
                return any(_is_entry(item) and item.name not in self._skipped for item in scan)
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
            fd = os.open(path, _ENTRY_FLAGS)
        except FileNotFoundError:
            return None
        except OSError as exc:  # a symlink, no permission, ...: not something this process can send
            self._skip(name, _reason(exc))
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
                items, crc, length = read_header(os.pread(fd, _HEADER.size, 0))
                if info.st_size != _HEADER.size + length:
                    raise SpoolCorruptError("the file's size does not match its header")
                payload = self._read_payload(fd, length)
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

    @staticmethod
    def _read_payload(fd: int, length: int) -> bytes:
        chunks = []
        offset = _HEADER.size
        remaining = length
        while remaining > 0:
            chunk = os.pread(fd, min(remaining, 1 << 20), offset)
            if not chunk:
                raise SpoolCorruptError("truncated payload")
            chunks.append(chunk)
            offset += len(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)

    def _skip(self, name: str, why: str) -> None:
        self._skipped.add(name)
        _log_skipped(self.directory / name, why)

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
            self._delete_corrupt(path, target_dir, _reason(exc))
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
            self._skip(path.name, _reason(exc))

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
            if not name.startswith(_TMP_PREFIX):
                continue
            path = self.directory / name
            try:
                pid = int(name[len(_TMP_PREFIX):].split("-", 1)[0])
                stale = not _pid_alive(pid) or now - path.stat().st_mtime > _STALE_TMP_SECONDS
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
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | _CLOEXEC | getattr(os, "O_NOFOLLOW", 0), 0o600)
        except FileNotFoundError:
            return False  # the directory is gone: nothing to replay
        except OSError as exc:
            # Something else has the lock file's name (a directory, a symlink): lock the signal's directory
            # itself, which every process can open, rather than stop replaying.
            log_once(("spool-lock", str(lock_path)),
                     "otel-perf: %s cannot be used as the spool's lock (%s); locking %s instead",
                     lock_path, _reason(exc), self.directory)
            try:
                fd = os.open(self.directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _CLOEXEC)
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
