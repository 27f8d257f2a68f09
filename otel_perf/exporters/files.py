"""OTLP JSON lines files: one export request per line, the OpenTelemetry Collector file exporter's format.

Why this module exists: ``otel-perf run`` and ``make demo`` must work with no backend, and what they write
must be readable by ``otel-perf report``, by the collector's ``otlpjsonfile`` receiver and by a person.
``opentelemetry-exporter-otlp-json-file`` exists, but it pins an ``exporter-otlp-common`` release that breaks
the coherent OpenTelemetry set we depend on (the releases ``pyproject.toml`` pins) and writes one
file for every process, so this small module encodes with the standard OTLP protobuf encoders and writes
protobuf JSON (camelCase fields, hex trace and span ids, enums as integers, 64-bit integers as strings).

Files live under ``OTEL_PERF_OUTPUT_DIR`` (default ``./otel-perf-data``), one per process and signal:
``traces-<start>-<pid>.jsonl`` (``profiles-...`` too, with continuous profiling). A forked child opens
its own file at its first export.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk._logs.export import LogRecordExporter, LogRecordExportResult
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from otel_perf._config import get_settings
from otel_perf._safety import log_once

if TYPE_CHECKING:
    from google.protobuf.message import Message

# The OTLP encoders and protobuf (about 40 ms of import time) are imported on the first export, in the
# export thread: every Python under `otel-perf run` without an endpoint makes these exporters at start-up.

__all__ = [
    "FileLogExporter",
    "FileMetricExporter",
    "FileProfileExporter",
    "FileSpanExporter",
    "iter_requests",
    "request_to_json",
]

_ID_KEYS = frozenset({"traceId", "spanId", "parentSpanId", "profileId"})


def _hex_ids(value: Any) -> Any:
    """OTLP/JSON writes trace, span and profile ids as hex, where protobuf JSON would write base64."""
    if isinstance(value, dict):
        return {k: (base64.b64decode(v).hex() if k in _ID_KEYS and isinstance(v, str) else _hex_ids(v))
                for k, v in value.items()}
    if isinstance(value, list):
        return [_hex_ids(v) for v in value]
    return value


def request_to_json(request: Message) -> str:
    """One OTLP export request as one line of OTLP JSON (no newline)."""
    from google.protobuf.json_format import MessageToDict

    as_dict = MessageToDict(request, use_integers_for_enums=True)
    return json.dumps(_hex_ids(as_dict), separators=(",", ":"))


_writers: weakref.WeakSet[_JsonLinesWriter] = weakref.WeakSet()


def _replace_locks_after_fork() -> None:
    # A lock held by another thread of the parent at fork time (an export in progress) stays held in the
    # child, whose first export would then wait forever: each writer gets a new one.
    for writer in list(_writers):
        writer._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_replace_locks_after_fork)


def _open_above_std_fds(target: Path) -> IO[str]:
    """``open(target, "a")`` on a descriptor above 2. This runs in an export thread at any moment: while the
    program has closed one of its standard descriptors for a moment (to swap them, as CPython's
    test_subprocess does), a plain open would take that number, and once the program puts its stdout back
    there, the telemetry lines would go to stdout."""
    fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    if fd <= 2 and sys.platform != "win32":
        import fcntl

        high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
        os.close(fd)
        fd = high
    return open(fd, "a", encoding="utf-8")


class _JsonLinesWriter:
    """Appends lines to ``<dir>/<signal>-<start>-<pid>.jsonl``; reopens after fork."""

    def __init__(self, signal: str, directory: str | os.PathLike[str] | None, path: str | None,
                 stream: IO[str] | None) -> None:
        self._signal = signal
        self._directory = directory
        self._fixed_path = path
        self._stream = stream
        self._file: IO[str] | None = None
        self._pid = -1
        self._lock = threading.Lock()  # replaced in a forked child (_replace_locks_after_fork)
        self.path: Path | None = Path(path) if path else None
        _writers.add(self)

    def _open(self) -> IO[str]:
        if self._stream is not None:
            return self._stream
        pid = os.getpid()
        if self._file is None or pid != self._pid:
            # After fork the inherited handle belongs to the parent's file: open this process's own.
            if self._fixed_path:
                target = Path(self._fixed_path)
            else:
                directory = Path(self._directory or get_settings().output_dir)
                stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
                target = directory / f"{self._signal}-{stamp}-{pid}.jsonl"
            target.parent.mkdir(parents=True, exist_ok=True)
            self._file = _open_above_std_fds(target)
            self._pid = pid
            self.path = target
        return self._file

    def write(self, line: str) -> bool:
        try:
            with self._lock:
                out = self._open()
                out.write(line + "\n")
                out.flush()
            return True
        except OSError as exc:
            log_once(("file-export", self._signal, str(exc)),
                     "otel-perf: cannot write %s to %s: %s", self._signal,
                     self.path or self._directory or get_settings().output_dir, exc)
            return False

    def close(self) -> None:
        with self._lock:
            if self._file is not None and self._pid == os.getpid():
                self._file.close()
            self._file = None


class FileSpanExporter(SpanExporter):
    """Write spans as OTLP JSON lines (entry point ``otel_perf_file``).

    Args:
        directory: where to create this process's file (default ``OTEL_PERF_OUTPUT_DIR``).
        path: write to exactly this file instead.
        stream: write to this text stream instead (e.g. ``sys.stdout``).
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None, path: str | None = None,
                 stream: IO[str] | None = None) -> None:
        self._writer = _JsonLinesWriter("traces", directory, path, stream)

    @property
    def path(self) -> Path | None:
        return self._writer.path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

        ok = self._writer.write(request_to_json(encode_spans(spans)))
        return SpanExportResult.SUCCESS if ok else SpanExportResult.FAILURE

    def shutdown(self) -> None:
        self._writer.close()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class FileMetricExporter(MetricExporter):
    """Write metrics as OTLP JSON lines (entry point ``otel_perf_file``); cumulative temporality."""

    def __init__(self, directory: str | os.PathLike[str] | None = None, path: str | None = None,
                 stream: IO[str] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._writer = _JsonLinesWriter("metrics", directory, path, stream)

    @property
    def path(self) -> Path | None:
        return self._writer.path

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000,
               **kwargs: Any) -> MetricExportResult:
        from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics

        ok = self._writer.write(request_to_json(encode_metrics(metrics_data)))
        return MetricExportResult.SUCCESS if ok else MetricExportResult.FAILURE

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self._writer.close()


class FileLogExporter(LogRecordExporter):
    """Write log records as OTLP JSON lines (entry point ``otel_perf_file``)."""

    def __init__(self, directory: str | os.PathLike[str] | None = None, path: str | None = None,
                 stream: IO[str] | None = None) -> None:
        self._writer = _JsonLinesWriter("logs", directory, path, stream)

    @property
    def path(self) -> Path | None:
        return self._writer.path

    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs

        ok = self._writer.write(request_to_json(encode_logs(batch)))
        return LogRecordExportResult.SUCCESS if ok else LogRecordExportResult.FAILURE

    def shutdown(self) -> None:
        self._writer.close()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class FileProfileExporter:
    """Write profiles (continuous profiling) as OTLP JSON lines, ``profiles-<start>-<pid>.jsonl``; same
    arguments as :class:`FileSpanExporter`. ``export`` takes an ``ExportProfilesServiceRequest``."""

    def __init__(self, directory: str | os.PathLike[str] | None = None, path: str | None = None,
                 stream: IO[str] | None = None) -> None:
        self._writer = _JsonLinesWriter("profiles", directory, path, stream)

    @property
    def path(self) -> Path | None:
        return self._writer.path

    def export(self, request: Message, samples: int) -> bool:
        return self._writer.write(request_to_json(request))

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True

    def shutdown(self) -> None:
        self._writer.close()


def iter_requests(path: str | os.PathLike[str]) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Yield (file, request) for every line of every ``*.jsonl`` file under ``path`` (or of that file).

    A line that is not JSON (a file cut short by a crash) is skipped with one warning per file.
    """
    root = Path(path)
    files = sorted(root.rglob("*.jsonl")) if root.is_dir() else [root]
    for file in files:
        with open(file, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    yield file, json.loads(line)
                except json.JSONDecodeError:
                    log_once(("bad-jsonl", str(file)), "otel-perf: %s line %d is not JSON; skipped", file,
                             number)
