"""The spool's files: the layout of a spool directory, an entry's format and name, and the directory check.

Why this module exists: ``_spool.py`` manages the queue (writing, claiming, locking, the bound); what an
entry looks like on disk is a concern of its own, shared by the queue and its bound (``_spool_bound.py``).

Layout under the spool directory (``OTEL_PERF_SPOOL_DIR``)::

    <signal>/<time_ns>-<pid>-<seq>-<size>.otlp   one entry: header + one encoded OTLP export request
                                                 (signal: traces, metrics, logs, profiles)
    <signal>/.tmp-<pid>-<name>                   an entry being written (renamed into place when complete)
    <signal>/.replay.lock                        flock'd by the one process replaying this signal right now
    <signal>/corrupt/                            entries that failed their checks, moved aside (the
                                                 newest few per signal, kept for diagnosis)

An entry is a header (magic, version, item count, CRC32 of the payload, payload length) followed by the
payload. Entry names sort by time, then pid, then a per-process sequence number, so a plain sort is the
replay order; a name ends with the entry's size, so the bound can be kept from a listing alone.
"""

from __future__ import annotations

import os
import struct
import threading
import time
import zlib
from pathlib import Path

from otel_perf._safety import log_once

__all__ = ["ALL_SIGNALS", "CLOEXEC", "ENTRY_FLAGS", "ENTRY_SUFFIX", "HEADER", "SIGNALS", "TMP_PREFIX",
           "SpoolCorruptError", "check_directory", "encode_header", "is_entry", "log_skipped", "next_name",
           "pid_alive", "read_header", "read_payload", "reason", "size_from_name"]

#: The signals whose directories every spool has (made and checked up front).
SIGNALS = ("traces", "metrics", "logs")
#: Every signal a spool holds: profiles (continuous profiling, off by default) get their directory when
#: their exporter starts.
ALL_SIGNALS = (*SIGNALS, "profiles")

_MAGIC = b"OPSP"
_VERSION = 1
# magic, version, item count, crc32 of the payload, payload length
HEADER = struct.Struct(">4sBIIQ")
ENTRY_SUFFIX = ".otlp"
TMP_PREFIX = ".tmp-"

CLOEXEC = getattr(os, "OCLOEXEC", 0)
# Never follow a symlink out of the spool, never block on a FIFO named like an entry.
ENTRY_FLAGS = os.O_RDONLY | CLOEXEC | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)


class SpoolCorruptError(ValueError):
    """An entry failed its checks (bad magic, truncated, checksum mismatch)."""


_last_ns = 0
_seq = 0
_name_lock = threading.Lock()


def next_name(size: int) -> str:
    """A name that sorts after every name this process made before (even if the wall clock steps back).

    It ends with the entry's size in bytes, so the bound can be kept from a directory listing alone.
    """
    global _last_ns, _seq
    with _name_lock:
        now = max(time.time_ns(), _last_ns + 1)
        _last_ns = now
        _seq += 1
        return f"{now:020d}-{os.getpid():010d}-{_seq:010d}-{size}{ENTRY_SUFFIX}"


def size_from_name(name: str) -> int | None:
    parts = name[:-len(ENTRY_SUFFIX)].split("-")
    if len(parts) != 4 or not parts[3].isdigit():
        return None
    return int(parts[3])


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_entry(item: os.DirEntry[str]) -> bool:
    """Whether a directory item is a complete entry: named like one and a regular file.

    Anything else named like an entry (a directory, a symlink, a FIFO) is skipped, and logged once.
    """
    name = item.name
    if not name.endswith(ENTRY_SUFFIX) or name.startswith("."):
        return False
    try:
        regular = item.is_file(follow_symlinks=False)
    except OSError:
        regular = False
    if not regular:
        log_skipped(item.path, "it is not a regular file")
    return regular


def log_skipped(path: str | os.PathLike[str], why: str) -> None:
    log_once(("spool-skipped", os.fspath(path)),
             "otel-perf: %s in the spool is skipped (%s): it is neither sent nor counted toward the spool's "
             "bound. Move it out of the spool directory.", os.fspath(path), why)


def reason(exc: OSError) -> str:
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
                probe = directory / signal / f"{TMP_PREFIX}{os.getpid()}-probe"
                os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | CLOEXEC, 0o600))
                os.unlink(probe)
        except OSError as exc:
            return reason(exc)
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
    if len(data) < HEADER.size:
        raise SpoolCorruptError("truncated header")
    magic, version, items, crc, length = HEADER.unpack_from(data)
    if magic != _MAGIC or version != _VERSION:
        raise SpoolCorruptError("not a spool entry")
    return items, crc, length


def encode_header(items: int, payload: bytes) -> bytes:
    """The header of an entry holding ``payload`` (``items`` spans, points, records or samples)."""
    return HEADER.pack(_MAGIC, _VERSION, items, zlib.crc32(payload), len(payload))


def read_payload(fd: int, length: int) -> bytes:
    """The ``length`` bytes after an entry's header. Raises SpoolCorruptError when the file is shorter."""
    chunks = []
    offset = HEADER.size
    remaining = length
    while remaining > 0:
        chunk = os.pread(fd, min(remaining, 1 << 20), offset)
        if not chunk:
            raise SpoolCorruptError("truncated payload")
        chunks.append(chunk)
        offset += len(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)
