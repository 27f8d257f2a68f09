"""The OpenTelemetry internals in one place: each falls back to the public path when it is not as expected."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from otel_perf import _aggregate, _sdk_internals, _sdk_internals_storage
from otel_perf._aggregate import AggregatedHistogram
from otel_perf.testing import metric_points

BOUNDS = (0.125, 0.5, 1.0)


class _UnexpectedStorage:
    """A reader storage of a shape this otel-perf does not know (an SDK release that changed it)."""


def test_publication_falls_back_to_the_public_api_when_the_storage_changed(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """When the SDK's metric storage is not what otel-perf expects, publication records through the public
    Histogram API instead: the count stays exact, and one log line says so."""
    monkeypatch.setattr(_aggregate, "_fallback_only", False)
    real_storages = _sdk_internals_storage._storages

    def unexpected(instrument: Any) -> Any:
        found = real_storages(instrument)
        return None if found is None else (found[0], {"reader": _UnexpectedStorage()})

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    hist = AggregatedHistogram("test.fallback", "s", "test", BOUNDS)
    hist.bind(provider.get_meter("t"))
    series = hist.series({"k": "v"})
    for value in (0.1, 0.25, 0.25, 2.0):
        series.record(value)
    monkeypatch.setattr(_sdk_internals_storage, "_storages", unexpected)
    with caplog.at_level(logging.WARNING, logger="otel_perf"):
        (point,) = metric_points(reader, "test.fallback")
        series.record(0.75)
        (point_after,) = metric_points(reader, "test.fallback")
    assert point.count == 4 and list(point.bucket_counts) == [1, 2, 0, 1]
    assert point_after.count == 5
    assert len([r for r in caplog.records if "recording through the SDK" in r.getMessage()]) == 1
    assert _aggregate._fallback_only
    provider.shutdown()


def test_start_up_check_never_raises_and_the_first_publication_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """A start-up check that cannot find how the SDK keys attribute sets does not raise; it is looked for
    again at the first publication."""
    monkeypatch.setattr(_sdk_internals_storage, "_attributes_key", None)
    monkeypatch.setattr(_sdk_internals_storage, "_storages", lambda instrument: None)
    _sdk_internals.check_at_startup()
    assert _sdk_internals_storage._attributes_key is None
    monkeypatch.undo()
    monkeypatch.setattr(_sdk_internals_storage, "_attributes_key", None)
    _sdk_internals.check_at_startup()
    assert _sdk_internals_storage._attributes_key is not None


def test_a_meters_provider_is_told_by_its_measurement_consumer() -> None:
    """Two meters of one provider share a measurement consumer, those of two providers do not; a meter
    that is not an SDK meter has none (the caller then assumes one provider)."""
    first, second = MeterProvider(), MeterProvider()
    a, b = first.get_meter("a"), first.get_meter("b")
    assert _sdk_internals.measurement_consumer(a) is _sdk_internals.measurement_consumer(b) is not None
    assert _sdk_internals.measurement_consumer(second.get_meter("a")) is not _sdk_internals.measurement_consumer(a)
    assert _sdk_internals.measurement_consumer(object()) is None
    first.shutdown()
    second.shutdown()


def _global_sdk_providers() -> tuple[Any, Any, Any]:
    from opentelemetry import metrics, trace
    from opentelemetry._logs import set_logger_provider
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, InMemoryLogRecordExporter
    from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, PeriodicExportingMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(InMemorySpanExporter()))
    logger_provider = LoggerProvider()
    logger_provider.add_log_record_processor(BatchLogRecordProcessor(InMemoryLogRecordExporter()))
    meter_provider = MeterProvider(metric_readers=[
        PeriodicExportingMetricReader(ConsoleMetricExporter(), export_interval_millis=600_000),
        InMemoryMetricReader()])
    trace.set_tracer_provider(tracer_provider)
    set_logger_provider(logger_provider)
    metrics.set_meter_provider(meter_provider)
    return tracer_provider, logger_provider, meter_provider


def test_the_export_locks_a_fork_waits_for_are_found_for_every_signal(otel_globals: None) -> None:
    """A fork under the pool instrumentation waits for the SDK's exports in progress: each batch processor's
    export lock, each pushing metric reader's and the meter provider's collection lock are found, and the
    collection lock is the one a collection holds."""
    providers = _global_sdk_providers()
    try:
        found = list(_sdk_internals.export_locks())
        assert [signal for signal, _ in found] == ["traces", "logs", "metrics", "metrics"]  # a pull reader has none
        assert all(hasattr(lock, "acquire") for _, lock in found)
        collection_lock = found[-1][1]
        with collection_lock:  # held as a collection holds it: a collection in another thread waits
            collecting = threading.Thread(target=providers[2].force_flush)
            collecting.start()
            collecting.join(0.2)
            assert collecting.is_alive()
        collecting.join(10)
        assert not collecting.is_alive()
    finally:
        for provider in providers:
            provider.shutdown()


def test_export_locks_fall_back_to_not_waiting_when_a_batch_processor_changed(
        otel_globals: None, caplog: pytest.LogCaptureFixture) -> None:
    """An SDK release whose batch processor keeps its export lock elsewhere: a fork does not wait for that
    processor (as without otel-perf), and one INFO line says so, once."""
    providers = _global_sdk_providers()
    tracer_provider = providers[0]
    (processor,) = tracer_provider._active_span_processor._span_processors
    moved = processor._batch_processor
    processor._batch_processor = None
    try:
        with caplog.at_level(logging.INFO, logger="otel_perf"):
            first = [signal for signal, _ in _sdk_internals.export_locks()]
            second = [signal for signal, _ in _sdk_internals.export_locks()]
        assert first == second == ["logs", "metrics", "metrics"]
        assert len([r for r in caplog.records if "BatchSpanProcessor" in r.getMessage()]) == 1
    finally:
        processor._batch_processor = moved
        for provider in providers:
            provider.shutdown()


def test_a_subclass_of_the_sdk_provider_has_its_export_locks_found(otel_globals: None) -> None:
    """A program's own subclasses of the SDK's TracerProvider and BatchSpanProcessor (defined outside the
    SDK) still have the processor's export lock waited for at a fork."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    class AppTracerProvider(TracerProvider):
        pass

    class AppSpanProcessor(BatchSpanProcessor):
        pass

    provider = AppTracerProvider()
    processor = AppSpanProcessor(InMemorySpanExporter())
    provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    try:
        found = [(signal, lock) for signal, lock in _sdk_internals.export_locks() if signal == "traces"]
        assert found == [("traces", processor._batch_processor._export_lock)]
    finally:
        provider.shutdown()
