"""The OpenTelemetry internals in one place: each falls back to the public path when it is not as expected."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from otel_perf import _aggregate, _sdk_internals
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
    real_storages = _sdk_internals._storages

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
    monkeypatch.setattr(_sdk_internals, "_storages", unexpected)
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
    monkeypatch.setattr(_sdk_internals, "_attributes_key", None)
    monkeypatch.setattr(_sdk_internals, "_storages", lambda instrument: None)
    _sdk_internals.check_at_startup()
    assert _sdk_internals._attributes_key is None
    monkeypatch.undo()
    monkeypatch.setattr(_sdk_internals, "_attributes_key", None)
    _sdk_internals.check_at_startup()
    assert _sdk_internals._attributes_key is not None


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
