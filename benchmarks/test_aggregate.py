"""Hot-path recording: an aggregated Series.record against the SDK's Histogram.record, same run."""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from otel_perf._aggregate import AggregatedHistogram
from otel_perf._semconv import DURATION_BOUNDARIES

ATTRS = {"otel_perf.pool.name": "bench", "otel_perf.pool.kind": "thread", "otel_perf.job.outcome": "ok"}


def _noop(value: float) -> None:
    return None


def test_record_bare(benchmark: Any) -> None:
    """The bare twin: a function call with the same argument."""
    benchmark.group = "aggregate.record"
    benchmark(_noop, 0.003)


def test_record_sdk_histogram_3_attrs(benchmark: Any) -> None:
    """One SDK Histogram.record with 3 attributes: the unit the issues' budgets are expressed in."""
    benchmark.group = "aggregate.record"
    provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    histogram = provider.get_meter("bench").create_histogram("bench.sdk", unit="s")
    benchmark(histogram.record, 0.003, ATTRS)
    provider.shutdown()


def test_record_aggregated_series(benchmark: Any) -> None:
    """otel-perf's hot path: a pre-resolved series, per-thread cell, no lock, no SDK call."""
    benchmark.group = "aggregate.record"
    provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    hist = AggregatedHistogram("bench.aggregated", "s", "bench", DURATION_BOUNDARIES)
    hist.bind(provider.get_meter("bench"))
    series = hist.series(ATTRS)
    benchmark(series.record, 0.003)
    provider.shutdown()
