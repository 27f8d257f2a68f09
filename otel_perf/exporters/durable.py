"""Durable OTLP export: batches survive a backend that is down, slow or restarted, and a killed program.

Why this module exists: the standard OTLP exporters retry a batch for a while and then drop it, and they
send from the SDK's batch processor thread, so a stalled backend stalls that thread until its queue
overflows. These exporters (entry point ``otlp_durable`` for traces, metrics and logs) write every batch,
encoded as the OTLP export request, to an on-disk spool first (``_spool.py``: atomic, ordered, bounded,
shared safely between processes) and return; a daemon thread per exporter (``_sender.py``) sends the
spool's entries in order over OTLP gRPC or http/protobuf (``_transport.py``), deleting each entry only
once the backend accepted it, with exponential backoff while the backend is unreachable. Entries left by
an earlier run (or another process sharing the directory) are sent by the first exporter of that signal
to start.

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

import os
import tempfile
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

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
from otel_perf._safety import log_once
from otel_perf.exporters._sender import Sender
from otel_perf.exporters._spool import Spool
from otel_perf.exporters._transport import Transport, open_transport
from otel_perf.exporters.otlp import Signal, resolve_target

__all__ = ["DurableLogExporter", "DurableMetricExporter", "DurableProfileExporter", "DurableSpanExporter"]

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
        self.target = resolve_target(signal, os.environ, endpoint=endpoint, protocol=protocol,
                                     headers=headers, insecure=insecure, certificate_file=certificate_file,
                                     compression=compression, timeout=timeout)
        self.timeout = self.target.timeout
        self.transport: Transport = open_transport(self.target, self.max_backoff)
        meter = (meter_provider or otel_metrics.get_meter_provider()).get_meter("otel_perf.exporters.durable")
        dropped = _semconv.metric("otel_perf.exporter.dropped")
        corrupt = _semconv.metric(_semconv.EXPORTER_SPOOL_CORRUPT)
        self._dropped = meter.create_counter(dropped.name, dropped.unit, dropped.description)
        self._corrupt = meter.create_counter(corrupt.name, corrupt.unit, corrupt.description)
        bound = max_bytes if max_bytes is not None else settings.spool_max_bytes
        self.spool = Spool(directory, signal, bound, on_drop=self.count_drop,
                           on_corrupt=self._count_corrupt, fsync=fsync)
        self._pending: set[str] = set()
        self._lock = threading.Lock()
        self._sender: Sender | None = None
        self._shutdown = False
        _exporters.add(self)
        self._ensure_sender()  # replay what an earlier run (or another process) left

    def _ensure_sender(self) -> Sender:
        sender = self._sender
        if sender is None:
            with self._lock:
                if self._sender is None:
                    self._sender = Sender(self)
                sender = self._sender
        return sender

    def count_drop(self, signal: str, items: int, reason: str) -> None:
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
            self.count_drop(self.signal, items, _semconv.EXPORTER_DROP_REASON_SPOOL_ERROR)
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
        if sender is None or not sender.is_alive():
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
