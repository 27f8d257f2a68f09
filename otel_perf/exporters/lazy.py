"""OTLP exporters that load their module (and gRPC or ``requests``) on their first export.

Why this module exists: the standard OTLP exporter modules cost about 100 ms of import time (gRPC 70 ms of
it, protobuf most of the rest), paid by every instrumented Python, child Pythons included, before the
program runs, though nothing is sent until the first batch leaves: the batch processors' and the periodic
metric reader's worker threads call ``export()`` seconds later. A lazy exporter stands in for the real one
from the start: the SDK's processors and readers queue what is recorded exactly as they would, and the first
``export()`` call, in that worker thread, builds the real exporter (the same class, with the same
arguments, reading the same ``OTEL_EXPORTER_OTLP_*`` variables then) and hands it the batch. Nothing
recorded before is lost and start-up does not wait.

``force_flush()`` and ``shutdown()`` are forwarded once the real exporter exists; before that there is
nothing to flush, and shutting down does not import gRPC just to close it. A metric exporter must tell the
``PeriodicExportingMetricReader`` its preferred temporality and aggregation when the reader is made, before
the real one exists: :class:`LazyOTLPMetricExporter` reads them from the variables the real OTLP metric
exporter reads (``OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE``,
``OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION``) with its rules, without importing protobuf;
the real exporter then gets exactly those mappings (and warns, once, about a value it does not know).

Used where otel-perf's own set-up is in charge: ``configure()`` wraps the standard OTLP exporters this
way, and ``otel-perf run`` names the entry point ``otel_perf_otlp`` (registered for the three signals)
when it picks OTLP. A user's explicit ``otlp`` under the stock launcher set-up stays the stock exporter.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry.sdk._logs.export import LogRecordExporter, LogRecordExportResult
from opentelemetry.sdk.metrics import (
    Counter,
    Histogram,
    ObservableCounter,
    ObservableGauge,
    ObservableUpDownCounter,
    UpDownCounter,
)
from opentelemetry.sdk.metrics.export import AggregationTemporality, MetricExporter, MetricExportResult
from opentelemetry.sdk.metrics.view import (
    Aggregation,
    ExplicitBucketHistogramAggregation,
    ExponentialBucketHistogramAggregation,
)
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from otel_perf._safety import log_once, raise_internal_errors

__all__ = [
    "STANDARD_OTLP_NAMES",
    "LazyOTLPLogExporter",
    "LazyOTLPMetricExporter",
    "LazyOTLPSpanExporter",
    "lazy_exporter",
    "load_otlp_class",
    "otlp_metric_preferences",
]

#: The names of the standard OTLP exporters (``opentelemetry-exporter-otlp``, a dependency of otel-perf).
STANDARD_OTLP_NAMES = frozenset({"otlp", "otlp_proto_grpc", "otlp_proto_http"})

_DELTA, _CUMULATIVE = AggregationTemporality.DELTA, AggregationTemporality.CUMULATIVE
#: OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE, as the OTLP metric exporter reads it (its mixin in
#: opentelemetry-exporter-otlp-proto-common); tests/exporters/test_lazy.py compares the two.
_TEMPORALITY: dict[str, dict[type, AggregationTemporality]] = {
    "DELTA": {Counter: _DELTA, UpDownCounter: _CUMULATIVE, Histogram: _DELTA, ObservableCounter: _DELTA,
              ObservableUpDownCounter: _CUMULATIVE, ObservableGauge: _CUMULATIVE},
    "LOWMEMORY": {Counter: _DELTA, UpDownCounter: _CUMULATIVE, Histogram: _DELTA, ObservableCounter: _CUMULATIVE,
                  ObservableUpDownCounter: _CUMULATIVE, ObservableGauge: _CUMULATIVE},
    "CUMULATIVE": {Counter: _CUMULATIVE, UpDownCounter: _CUMULATIVE, Histogram: _CUMULATIVE,
                   ObservableCounter: _CUMULATIVE, ObservableUpDownCounter: _CUMULATIVE,
                   ObservableGauge: _CUMULATIVE},
}


def otlp_metric_preferences(
    preferred_temporality: dict[type, AggregationTemporality] | None = None,
    preferred_aggregation: dict[type, Aggregation] | None = None,
) -> tuple[dict[type, AggregationTemporality], dict[type, Aggregation]]:
    """The temporality and aggregation the OTLP metric exporter would prefer, from the same variables
    (an unknown value means cumulative and explicit buckets, as there; the real exporter warns about it)."""
    preference = os.environ.get("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "CUMULATIVE").upper().strip()
    temporality: dict[type, AggregationTemporality] = dict(_TEMPORALITY.get(preference, _TEMPORALITY["CUMULATIVE"]))
    temporality.update(preferred_temporality or {})
    histogram = os.environ.get("OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION",
                               "explicit_bucket_histogram")
    aggregation: dict[type, Aggregation] = {
        Histogram: ExponentialBucketHistogramAggregation() if histogram == "base2_exponential_bucket_histogram"
        else ExplicitBucketHistogramAggregation()}
    aggregation.update(preferred_aggregation or {})
    return temporality, aggregation


def load_otlp_class(signal: str, name: str = "otlp") -> type:
    """The class the SDK's configurator loads for the exporter ``name`` of ``signal`` (for ``otlp``, by
    its protocol rule, the variables read now).

    Raises:
        ImportError: no such exporter is installed.
    """
    from importlib.metadata import entry_points

    from otel_perf._sdk_internals import exporter_name_resolver

    resolved = exporter_name_resolver()(name, signal)
    found = list(entry_points(group=f"opentelemetry_{signal}_exporter", name=resolved))
    if not found:
        raise ImportError(f"no {signal} exporter named {resolved!r} is installed (opentelemetry-exporter-otlp)")
    cls: type = found[0].load()
    return cls


_deferred: weakref.WeakSet[_Deferred] = weakref.WeakSet()


def _new_locks_after_fork() -> None:
    """A child forked while the export thread was building an exporter (importing gRPC takes a while)
    would wait forever for the lock that thread held: the child gets fresh locks, and builds its own."""
    for deferred in list(_deferred):
        deferred._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_locks_after_fork)


class _Deferred:
    """The real exporter, built once by the first caller that needs it (the export thread)."""

    def __init__(self, signal: str, build: Callable[[], Any]) -> None:
        self.signal = signal
        self._build = build
        self._lock = threading.Lock()
        self.real: Any = None
        self._closed = False
        self._failed = False
        _deferred.add(self)

    def get(self) -> Any:
        if self.real is not None or self._failed or self._closed:
            return self.real
        with self._lock:
            if self.real is None and not self._failed and not self._closed:
                try:
                    self.real = self._build()
                except Exception as exc:
                    if raise_internal_errors():
                        raise
                    self._failed = True
                    log_once(("lazy-exporter", self.signal),
                             "otel-perf: the OTLP %s exporter could not be made (%s); %s are not exported",
                             self.signal, exc, self.signal)
        return self.real

    def close(self) -> Any:
        """Mark shut down; the real exporter if it was built (the caller shuts it down)."""
        with self._lock:
            self._closed = True
            return self.real


class _LazyBatchExporter:
    """What the lazy span and log record exporters share: the deferred real exporter, flush and shutdown
    (their SDK base classes and result types differ, so each keeps its own typed ``export``)."""

    def __init__(self, signal: str, build: Callable[[], Any]) -> None:
        self._deferred = _Deferred(signal, build)

    def _export(self, items: Sequence[Any], failure: Any) -> Any:
        real = self._deferred.get()
        return failure if real is None else real.export(items)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        real = self._deferred.real
        return True if real is None else bool(real.force_flush(timeout_millis))

    def shutdown(self) -> None:
        real = self._deferred.close()
        if real is not None:
            real.shutdown()


class LazyOTLPSpanExporter(_LazyBatchExporter, SpanExporter):
    """A span exporter that builds the real one (by default the standard OTLP one) on its first export."""

    def __init__(self, build: Callable[[], SpanExporter] | None = None) -> None:
        super().__init__("traces", build or (lambda: load_otlp_class("traces")()))

    @property
    def exporter(self) -> SpanExporter | None:
        """The real exporter, once built."""
        real: SpanExporter | None = self._deferred.real
        return real

    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        result: SpanExportResult = self._export(spans, SpanExportResult.FAILURE)
        return result


class LazyOTLPLogExporter(_LazyBatchExporter, LogRecordExporter):
    """A log record exporter that builds the real one (by default the standard OTLP one) on its first export."""

    def __init__(self, build: Callable[[], LogRecordExporter] | None = None) -> None:
        super().__init__("logs", build or (lambda: load_otlp_class("logs")()))

    @property
    def exporter(self) -> LogRecordExporter | None:
        """The real exporter, once built."""
        real: LogRecordExporter | None = self._deferred.real
        return real

    def export(self, batch: Sequence[Any]) -> LogRecordExportResult:
        result: LogRecordExportResult = self._export(batch, LogRecordExportResult.FAILURE)
        return result


class LazyOTLPMetricExporter(MetricExporter):
    """A metric exporter that builds the real one (by default the standard OTLP one) on its first export.

    Its preferred temporality and aggregation (what the periodic reader reads when it is made) come from
    :func:`otlp_metric_preferences`; the real exporter is built with exactly those.
    """

    def __init__(self, build: Callable[..., MetricExporter] | None = None,
                 preferred_temporality: dict[type, AggregationTemporality] | None = None,
                 preferred_aggregation: dict[type, Aggregation] | None = None) -> None:
        temporality, aggregation = otlp_metric_preferences(preferred_temporality, preferred_aggregation)
        super().__init__(preferred_temporality=temporality, preferred_aggregation=aggregation)
        make = build or (lambda **kwargs: load_otlp_class("metrics")(**kwargs))
        self._deferred = _Deferred(
            "metrics", lambda: make(preferred_temporality=temporality, preferred_aggregation=aggregation))

    @property
    def exporter(self) -> MetricExporter | None:
        """The real exporter, once built."""
        real: MetricExporter | None = self._deferred.real
        return real

    def export(self, metrics_data: Any, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        real = self._deferred.get()
        if real is None:
            return MetricExportResult.FAILURE
        result: MetricExportResult = real.export(metrics_data, timeout_millis=timeout_millis, **kwargs)
        return result

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        real = self._deferred.real
        return True if real is None else bool(real.force_flush(timeout_millis=timeout_millis))

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        real = self._deferred.close()
        if real is not None:
            real.shutdown(timeout_millis=timeout_millis, **kwargs)


def lazy_exporter(signal: str, name: str = "otlp") -> Any:
    """A lazy exporter for ``signal`` whose real exporter is the standard one named ``name``: the name is
    resolved, its entry point found and its module imported on the first export."""
    if signal == "metrics":
        return LazyOTLPMetricExporter(lambda **kwargs: load_otlp_class(signal, name)(**kwargs))
    if signal == "traces":
        return LazyOTLPSpanExporter(lambda: load_otlp_class(signal, name)())
    return LazyOTLPLogExporter(lambda: load_otlp_class(signal, name)())
