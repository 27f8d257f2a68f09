"""Durable OTLP export: batches survive a backend that is down, slow or restarted, and a killed program.

Why this module exists: the standard OTLP exporters retry a batch for a while and then drop it, and they
send from the SDK's batch processor thread, so a stalled backend stalls that thread until its queue
overflows. These exporters (entry point ``otlp_durable`` for traces, metrics and logs) write every batch,
encoded as the OTLP export request, to an on-disk spool first (``_spool.py``: atomic, ordered, bounded,
shared safely between processes) and return; a daemon thread per exporter sends the spool's entries in
order over OTLP gRPC or http/protobuf, deleting each entry only once the backend accepted it, with
exponential backoff while the backend is unreachable. Entries left by an earlier run (or another
process sharing the directory) are sent by the first exporter of that signal to start.

Usage::

    OTEL_PERF_SPOOL_DIR=/var/spool/myapp otel-perf run -- python app.py    # picked automatically
    OTEL_TRACES_EXPORTER=otlp_durable opentelemetry-instrument python app.py

    provider.add_span_processor(BatchSpanProcessor(DurableSpanExporter(spool_dir="/tmp/spool")))

Reads ``OTEL_PERF_SPOOL_DIR``, ``OTEL_PERF_SPOOL_MAX_BYTES`` and the standard ``OTEL_EXPORTER_OTLP_*``
variables (signal-specific first): endpoint, protocol, headers, insecure, certificate, client key and
certificate, compression, timeout (seconds, as the Python SDK's exporters read it).

Emits ``otel_perf.exporter.dropped`` ({item}; ``otel_perf.exporter.signal``,
``otel_perf.exporter.drop.reason`` = ``spool_full`` | ``rejected`` | ``spool_error``) and
``otel_perf.exporter.spool.corrupt`` ({entry}; ``otel_perf.exporter.signal``).
"""

from __future__ import annotations

import enum
import gzip
import http.client
import os
import random
import ssl
import tempfile
import threading
import time
import weakref
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import metrics as otel_metrics
from opentelemetry.exporter.otlp.proto.common._internal.metrics_encoder import OTLPMetricExporterMixin
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk._logs.export import LogRecordExporter, LogRecordExportResult
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from otel_perf import _semconv
from otel_perf._config import get_settings
from otel_perf._safety import log_once, raise_internal_errors
from otel_perf.exporters._spool import Spool
from otel_perf.exporters.otlp import OTLPTarget, Signal, resolve_target

__all__ = ["DurableLogExporter", "DurableMetricExporter", "DurableProfileExporter", "DurableSpanExporter"]

_HTTP_RETRYABLE = frozenset({429, 502, 503, 504})
# The gRPC codes the OTLP specification (and the SDK's exporter) retry; every other code is final.
_GRPC_RETRYABLE = frozenset({"CANCELLED", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED",
                             "OUT_OF_RANGE", "UNAVAILABLE", "DATA_LOSS"})
_GRPC_SERVICES = {
    "traces": "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    "metrics": "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
    "logs": "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
    "profiles": "/opentelemetry.proto.collector.profiles.v1development.ProfilesService/Export",
}


# --- configuration: otel_perf.exporters.otlp.resolve_target, the one resolver of OTEL_EXPORTER_OTLP_* ---

_Target = OTLPTarget


def _target(signal: Signal, environ: Mapping[str, str], *, endpoint: str | None, protocol: str | None,
            headers: Mapping[str, str] | None, insecure: bool | None, certificate_file: str | None,
            compression: str | None, timeout: float | None) -> OTLPTarget:
    return resolve_target(signal, environ, endpoint=endpoint, protocol=protocol, headers=headers,
                          insecure=insecure, certificate_file=certificate_file, compression=compression,
                          timeout=timeout)


# --- transports ------------------------------------------------------------------------------------


class _Outcome(enum.Enum):
    OK = "ok"
    RETRY = "retry"
    REJECT = "reject"


@dataclass(frozen=True)
class _Result:
    outcome: _Outcome
    detail: str = ""
    retry_after: float | None = None


def _read(path: str | None) -> bytes | None:
    if not path:
        return None
    with open(path, "rb") as handle:
        return handle.read()


class _GrpcTransport:
    """Sends encoded requests with the service's ``Export`` method as raw bytes (no re-encoding)."""

    def __init__(self, target: _Target, max_backoff: float) -> None:
        self._target = target
        self._max_backoff = max_backoff
        self._channel: Any = None
        self._call: Any = None
        self._pid = -1

    def _ensure(self) -> Any:
        if self._call is not None and self._pid == os.getpid():
            return self._call
        import grpc

        # The channel's own reconnect backoff (up to 120 s by default) would hide a backend that came
        # back; keep it within ours.
        backoff_ms = max(100, int(self._max_backoff * 1000))
        options = [("grpc.initial_reconnect_backoff_ms", min(1000, backoff_ms)),
                   ("grpc.min_reconnect_backoff_ms", min(1000, backoff_ms)),
                   ("grpc.max_reconnect_backoff_ms", backoff_ms)]
        parts = urlsplit(self._target.endpoint)
        address = parts.netloc if parts.netloc else self._target.endpoint
        compression = grpc.Compression.Gzip if self._target.compression == "gzip" else None
        if self._target.insecure:
            channel = grpc.insecure_channel(address, options=options, compression=compression)
        else:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read(self._target.certificate_file),
                private_key=_read(self._target.client_key_file),
                certificate_chain=_read(self._target.client_certificate_file),
            )
            channel = grpc.secure_channel(address, credentials, options=options, compression=compression)
        # An inherited channel (after fork) belongs to the parent: never use or close it here.
        self._channel = channel
        self._call = channel.unary_unary(_GRPC_SERVICES[self._target.signal])
        self._pid = os.getpid()
        return self._call

    def send(self, payload: bytes) -> _Result:
        import grpc

        call = self._ensure()
        try:
            call(payload, timeout=self._target.timeout, metadata=self._target.headers or None)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            name = getattr(code, "name", str(code))
            detail = f"gRPC {name}: {exc.details() if hasattr(exc, 'details') else exc}"
            if name == "UNAVAILABLE":
                # A fresh channel connects at our next attempt instead of after the channel's own backoff.
                self.close()
            return _Result(_Outcome.RETRY if name in _GRPC_RETRYABLE else _Outcome.REJECT, detail)
        return _Result(_Outcome.OK)

    def close(self) -> None:
        if self._channel is not None and self._pid == os.getpid():
            self._channel.close()
        self._channel = self._call = None


class _HttpTransport:
    """POSTs encoded requests as ``application/x-protobuf`` over one kept-alive connection."""

    def __init__(self, target: _Target) -> None:
        self._target = target
        parts = urlsplit(target.endpoint)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or "localhost"
        self._port = parts.port or (443 if self._https else 80)
        self._path = parts.path or "/"
        if parts.query:
            self._path += "?" + parts.query
        self._conn: http.client.HTTPConnection | None = None
        self._pid = -1

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        if self._https:
            context = ssl.create_default_context(cafile=self._target.certificate_file)
            if self._target.client_certificate_file:
                context.load_cert_chain(self._target.client_certificate_file, self._target.client_key_file)
            self._conn = http.client.HTTPSConnection(self._host, self._port, timeout=self._target.timeout,
                                                     context=context)
        else:
            self._conn = http.client.HTTPConnection(self._host, self._port, timeout=self._target.timeout)
        self._pid = os.getpid()
        return self._conn

    def send(self, payload: bytes) -> _Result:
        headers = {"Content-Type": "application/x-protobuf", **dict(self._target.headers)}
        body = payload
        if self._target.compression == "gzip":
            body = gzip.compress(payload)
            headers["Content-Encoding"] = "gzip"
        elif self._target.compression == "deflate":
            body = zlib.compress(payload)
            headers["Content-Encoding"] = "deflate"
        conn = self._connection()
        try:
            conn.request("POST", self._path, body=body, headers=headers)
            response = conn.getresponse()
            answer = response.read()
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            return _Result(_Outcome.RETRY, f"{type(exc).__name__}: {exc}")
        if 200 <= response.status < 300:
            return _Result(_Outcome.OK)
        detail = f"HTTP {response.status}: {answer[:200]!r}"
        if response.status in _HTTP_RETRYABLE:
            retry_after: float | None = None
            try:
                retry_after = float(response.getheader("Retry-After") or "")
            except ValueError:
                pass
            return _Result(_Outcome.RETRY, detail, retry_after)
        return _Result(_Outcome.REJECT, detail)

    def close(self) -> None:
        if self._conn is not None and self._pid == os.getpid():
            self._conn.close()
        self._conn = None


# --- the sender ------------------------------------------------------------------------------------


class _Sender:
    """The daemon thread that sends one signal's spool entries in order, with backoff.

    It runs a pass when due: new data (unless backing off), a flush request, the end of a backoff, or the
    idle poll (entries another process left). A pass takes the spool's replay lock, sends entries oldest
    first and deletes each once accepted; a retryable failure ends the pass and starts a backoff.
    """

    def __init__(self, exporter: _DurableExporter) -> None:
        self._exporter = exporter
        self._cond = threading.Condition()
        self._due = 0.0  # run a pass at once: entries from an earlier run
        self._backoff = 0.0
        self._backoff_until = 0.0
        self._stopping = False
        self.sending = False
        self.failures = 0  # consecutive failed attempts (reset by a success)
        self.failed_attempts = 0  # all failed attempts, ever
        self._thread = threading.Thread(target=self._run, name=f"otel-perf-durable-{exporter.signal}",
                                        daemon=True)
        self._thread.start()

    # called from other threads
    def notify_data(self) -> None:
        with self._cond:
            due = max(time.monotonic(), self._backoff_until)
            if due < self._due:
                self._due = due
                self._cond.notify_all()

    def request_pass(self) -> None:
        """Run a pass now, even while backing off (a flush wants to know whether the backend is back)."""
        with self._cond:
            self._due = time.monotonic()
            self._cond.notify_all()

    def wait_progress(self, timeout: float) -> None:
        with self._cond:
            self._cond.wait(timeout)

    def stop(self, timeout: float) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(max(0.0, timeout))

    # the thread
    def _run(self) -> None:
        exporter = self._exporter
        try:
            exporter.spool.remove_stale_temporaries()
        except OSError:
            pass
        while True:
            with self._cond:
                while not self._stopping and time.monotonic() < self._due:
                    self._cond.wait(self._due - time.monotonic())
                if self._stopping:
                    return
                # New data or a flush during the pass lowers this again.
                self._due = float("inf")
            try:
                next_in = self._pass()
            except Exception as exc:  # never let the thread die: the spool keeps the data
                if raise_internal_errors():
                    raise  # under otel-perf's tests a fault surfaces (pytest reports thread exceptions)
                log_once(("durable-sender", exporter.signal, type(exc).__name__),
                         "otel-perf: durable %s export failed (%s: %s); retrying", exporter.signal,
                         type(exc).__name__, exc, exc_info=True)
                next_in = exporter.max_backoff
            with self._cond:
                self._due = min(self._due, time.monotonic() + next_in)
                self._cond.notify_all()

    def _pass(self) -> float:
        """Send what the spool holds. Returns the seconds until the next pass."""
        exporter = self._exporter
        spool = exporter.spool
        if not spool.has_entries():
            return exporter.poll_interval
        if not spool.try_lock():
            return exporter.lock_poll_interval  # another process is replaying this signal
        try:
            while True:
                names = spool.entries()
                if not names:
                    return exporter.poll_interval
                for name in names:
                    with self._cond:
                        if self._stopping:
                            return exporter.poll_interval
                    try:
                        entry = spool.claim(name)
                    except BlockingIOError:
                        return exporter.lock_poll_interval  # being evicted this instant
                    if entry is None:
                        continue  # gone, or corrupt and moved aside
                    self.sending = True
                    try:
                        result = exporter.transport.send(entry.payload)
                    except Exception:
                        entry.release()
                        raise
                    finally:
                        self.sending = False
                    if result.outcome is _Outcome.RETRY:
                        entry.release()
                        return self._back_off(result)
                    if result.outcome is _Outcome.REJECT:
                        exporter._count_drop(exporter.signal, entry.items,
                                             _semconv.EXPORTER_DROP_REASON_REJECTED)
                        log_once(("durable-rejected", exporter.signal),
                                 "otel-perf: the backend rejected a %s batch (%s); it is dropped, not "
                                 "retried. Further rejections are counted in %s, not logged.",
                                 exporter.signal, result.detail, "otel_perf.exporter.dropped")
                    entry.remove()
                    self._backoff = 0.0
                    self._backoff_until = 0.0
                    self.failures = 0
                    with self._cond:
                        self._cond.notify_all()
        finally:
            spool.unlock()

    def _back_off(self, result: _Result) -> float:
        exporter = self._exporter
        self.failures += 1
        self.failed_attempts += 1
        if self.failures == 1:
            log_once(("durable-unreachable", exporter.signal),
                     "otel-perf: the %s backend %s does not accept data yet (%s); batches are kept in %s "
                     "and retried. Not logged again.", exporter.signal, exporter.target.endpoint,
                     result.detail, exporter.spool.directory)
        doubled = self._backoff * 2 if self._backoff else exporter.min_backoff
        self._backoff = min(exporter.max_backoff, doubled)
        delay = self._backoff * random.uniform(0.5, 1.0)
        if result.retry_after is not None:
            delay = min(exporter.max_backoff, max(delay, result.retry_after))
        self._backoff_until = time.monotonic() + delay
        return delay


# --- the exporters ---------------------------------------------------------------------------------

_exporters: weakref.WeakSet[_DurableExporter] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # Threads do not survive fork: the child starts its own sender at its first export.
    for exporter in list(_exporters):
        exporter._sender = None
        exporter._pending = set()
        exporter._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class _DurableExporter:
    """What the three signals' exporters share: the spool, the transport, the sender and the counters."""

    def __init__(self, signal: Signal, *, spool_dir: str | os.PathLike[str] | None = None,
                 max_bytes: int | None = None, endpoint: str | None = None, protocol: str | None = None,
                 headers: Mapping[str, str] | None = None, insecure: bool | None = None,
                 certificate_file: str | None = None, compression: str | None = None,
                 timeout: float | None = None, min_backoff: float = 0.5, max_backoff: float = 30.0,
                 poll_interval: float = 1.0, fsync: bool = True, meter_provider: Any = None) -> None:
        settings = get_settings()
        directory = spool_dir or settings.spool_dir
        if not directory:
            directory = os.path.join(tempfile.gettempdir(), f"otel-perf-spool-{os.getuid()}")
            log_once("durable-no-spool-dir",
                     "otel-perf: durable export without OTEL_PERF_SPOOL_DIR; spooling under %s", directory)
        self.signal: Signal = signal
        self.min_backoff = min_backoff
        self.max_backoff = max(max_backoff, min_backoff)
        self.poll_interval = poll_interval
        self.lock_poll_interval = poll_interval
        self.target = _target(signal, os.environ, endpoint=endpoint, protocol=protocol, headers=headers,
                              insecure=insecure, certificate_file=certificate_file,
                              compression=compression, timeout=timeout)
        self.timeout = self.target.timeout
        self.transport: _GrpcTransport | _HttpTransport = (
            _GrpcTransport(self.target, self.max_backoff) if self.target.protocol == "grpc"
            else _HttpTransport(self.target))
        meter = (meter_provider or otel_metrics.get_meter_provider()).get_meter("otel_perf.exporters.durable")
        dropped = _semconv.metric("otel_perf.exporter.dropped")
        corrupt = _semconv.metric(_semconv.EXPORTER_SPOOL_CORRUPT)
        self._dropped = meter.create_counter(dropped.name, dropped.unit, dropped.description)
        self._corrupt = meter.create_counter(corrupt.name, corrupt.unit, corrupt.description)
        bound = max_bytes if max_bytes is not None else settings.spool_max_bytes
        self.spool = Spool(directory, signal, bound, on_drop=self._count_drop,
                           on_corrupt=self._count_corrupt, fsync=fsync)
        self._pending: set[str] = set()
        self._lock = threading.Lock()
        self._sender: _Sender | None = None
        self._shutdown = False
        _exporters.add(self)
        self._ensure_sender()  # replay what an earlier run (or another process) left

    def _ensure_sender(self) -> _Sender:
        sender = self._sender
        if sender is None:
            with self._lock:
                if self._sender is None:
                    self._sender = _Sender(self)
                sender = self._sender
        return sender

    def _count_drop(self, signal: str, items: int, reason: str) -> None:
        if items:
            self._dropped.add(items, {_semconv.EXPORTER_SIGNAL: signal,
                                      _semconv.EXPORTER_DROP_REASON: reason})

    def _count_corrupt(self, signal: str) -> None:
        self._corrupt.add(1, {_semconv.EXPORTER_SIGNAL: signal})  # the spool logs what it did with it

    def _spool_request(self, payload: bytes, items: int) -> bool:
        """Hand one encoded request to the spool and wake the sender. Returns False if it could not."""
        if self._shutdown:
            return False
        try:
            name = self.spool.append(payload, items)
        except OSError as exc:
            log_once(("durable-spool-write", self.signal, type(exc).__name__),
                     "otel-perf: cannot write to the %s spool %s (%s); those items are dropped",
                     self.signal, self.spool.directory, exc)
            self._count_drop(self.signal, items, _semconv.EXPORTER_DROP_REASON_SPOOL_ERROR)
            return False
        with self._lock:
            self._pending.add(name)
        self._ensure_sender().notify_data()
        return True

    @property
    def pending(self) -> list[str]:
        """Entries this exporter wrote that are still in the spool (not yet accepted by the backend)."""
        with self._lock:
            self._pending = self.spool.present(self._pending)
            return sorted(self._pending)

    @property
    def sending(self) -> bool:
        """Whether a request is on its way to the backend right now."""
        return self._sender is not None and self._sender.sending

    def _flush(self, timeout_millis: float | None, until_failure: bool = False) -> bool:
        """Wait until what this exporter wrote was delivered; at most the configured timeout.

        Args:
            timeout_millis: the caller's limit (the configured timeout caps it).
            until_failure: stop waiting at the first failed attempt (shutdown: the data is safe on
                disk, so exiting need not wait out the timeout for a backend that is down).
        """
        limit = self.timeout if timeout_millis is None else min(self.timeout, timeout_millis / 1000.0)
        deadline = time.monotonic() + max(0.0, limit)
        if not self.pending:
            return True
        sender = self._ensure_sender()
        failed_before = sender.failed_attempts
        sender.request_pass()
        while True:
            if not self.pending:
                return True
            if until_failure and sender.failed_attempts > failed_before:
                return False
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            sender.wait_progress(min(remaining, 0.05))

    def _shutdown_exporter(self, timeout_millis: float | None) -> None:
        if self._shutdown:
            return
        started = time.monotonic()
        self._flush(timeout_millis, until_failure=True)
        self._shutdown = True
        sender = self._sender
        limit = self.timeout if timeout_millis is None else min(self.timeout, timeout_millis / 1000.0)
        if sender is not None:
            # What is still spooled stays on disk for the next run; a send in flight ends within its timeout.
            sender.stop(max(0.0, limit - (time.monotonic() - started)))
        if sender is None or not sender._thread.is_alive():
            self.transport.close()


class DurableSpanExporter(_DurableExporter, SpanExporter):
    """Durable OTLP span exporter (entry point ``otlp_durable``): spools each batch, sends in order.

    Args:
        spool_dir: spool directory (default ``OTEL_PERF_SPOOL_DIR``).
        max_bytes: bound of the whole spool (default ``OTEL_PERF_SPOOL_MAX_BYTES``).
        endpoint, protocol, headers, insecure, certificate_file, compression, timeout: override the
            ``OTEL_EXPORTER_OTLP_*`` variables.
        min_backoff, max_backoff: seconds between retries while the backend fails (doubling, jittered).
        poll_interval: seconds between looks for entries other processes left.
        fsync: fsync each entry before it becomes visible.
        meter_provider: where ``otel_perf.exporter.dropped`` goes (default: the global one).
    """

    def __init__(self, **kwargs: Any) -> None:
        _DurableExporter.__init__(self, "traces", **kwargs)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if not spans:
            return SpanExportResult.SUCCESS
        ok = self._spool_request(encode_spans(spans).SerializeToString(), len(spans))
        return SpanExportResult.SUCCESS if ok else SpanExportResult.FAILURE

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._flush(timeout_millis)

    def shutdown(self) -> None:
        self._shutdown_exporter(None)


def _count_points(data: MetricsData) -> int:
    return sum(len(metric.data.data_points)
               for resource_metrics in data.resource_metrics
               for scope_metrics in resource_metrics.scope_metrics
               for metric in scope_metrics.metrics)


class DurableMetricExporter(_DurableExporter, MetricExporter, OTLPMetricExporterMixin):
    """Durable OTLP metric exporter (entry point ``otlp_durable``); same arguments as the span exporter,
    plus ``preferred_temporality`` and ``preferred_aggregation`` (default from
    ``OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE`` and
    ``OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION``, as the standard exporter)."""

    def __init__(self, preferred_temporality: dict[type, Any] | None = None,
                 preferred_aggregation: dict[type, Any] | None = None, **kwargs: Any) -> None:
        self._common_configuration(preferred_temporality, preferred_aggregation)
        _DurableExporter.__init__(self, "metrics", **kwargs)

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000,
               **kwargs: Any) -> MetricExportResult:
        points = _count_points(metrics_data)
        if not points:
            return MetricExportResult.SUCCESS
        ok = self._spool_request(encode_metrics(metrics_data).SerializeToString(), points)
        return MetricExportResult.SUCCESS if ok else MetricExportResult.FAILURE

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self._flush(timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self._shutdown_exporter(timeout_millis)


class DurableLogExporter(_DurableExporter, LogRecordExporter):
    """Durable OTLP log exporter (entry point ``otlp_durable``); same arguments as the span exporter."""

    def __init__(self, **kwargs: Any) -> None:
        _DurableExporter.__init__(self, "logs", **kwargs)

    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        if not batch:
            return LogRecordExportResult.SUCCESS
        ok = self._spool_request(encode_logs(batch).SerializeToString(), len(batch))
        return LogRecordExportResult.SUCCESS if ok else LogRecordExportResult.FAILURE

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._flush(timeout_millis)

    def shutdown(self) -> None:
        self._shutdown_exporter(None)


class DurableProfileExporter(_DurableExporter):
    """Durable OTLP profiles exporter (continuous profiling in durable mode): spools each profile, sends in
    order; same arguments as the span exporter. ``export`` takes an encoded ``ExportProfilesServiceRequest``
    and its number of samples (what ``otel_perf.exporter.dropped`` counts)."""

    def __init__(self, **kwargs: Any) -> None:
        _DurableExporter.__init__(self, "profiles", **kwargs)

    def export(self, request: Any, samples: int) -> bool:
        return self._spool_request(request.SerializeToString(), max(samples, 1))

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._flush(timeout_millis)

    def shutdown(self) -> None:
        self._shutdown_exporter(None)
