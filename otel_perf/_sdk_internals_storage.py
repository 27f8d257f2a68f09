"""The SDK's metric storage, the private OpenTelemetry names otel-perf's histograms rely on (half of
``_sdk_internals``, which re-exports these; ``docs/architecture.md``, "OpenTelemetry internals").

Why this module exists: ``_aggregate`` aggregates hot-path histograms in plain Python and publishes each
interval into the SDK's own storage at collection, so the exported histograms are exact and a measurement
costs no SDK call. That needs the storage's private shape (reader storages, view-instrument matches, how
an attribute set is keyed, the explicit-bucket aggregation's fields), which changes across SDK releases:
the key scheme is found at start-up (``storage_attributes_key``), and when anything is not what this
otel-perf expects the caller records representative values through the public API instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from time import time_ns
from typing import Any

from otel_perf._safety import log_once

__all__ = ["forget_histogram_points", "measurement_consumer", "merge_histogram", "storage_attributes_key"]


def measurement_consumer(meter: Any) -> Any:
    """What identifies a meter's SDK MeterProvider (its measurement consumer), or None when unknown (not an
    SDK meter, or an SDK that keeps it elsewhere: the caller then assumes one provider)."""
    meter = getattr(meter, "_real_meter", None) or meter  # a proxy meter made before the provider was set
    return getattr(meter, "_measurement_consumer", None)


def _storages(instrument: Any) -> tuple[Any, Any] | None:
    """(real SDK instrument, reader storages) or None when this is not an SDK instrument."""
    real = getattr(instrument, "_real_instrument", None) or instrument  # proxy instruments delegate
    consumer = getattr(real, "_measurement_consumer", None)
    if consumer is None:
        return None
    return real, consumer._reader_storages


_attributes_key: Callable[[dict[str, Any]], Any] | None = None


def storage_attributes_key() -> Callable[[dict[str, Any]], Any]:
    """How this SDK's metric storage keys an attribute set (private, and changed across releases:
    ``frozenset(attributes.items())`` up to about 1.40, ``_hash_attributes`` later). Found once (at start-up,
    else at the first publication) by recording one value into a private MeterProvider and reading the key
    it made; a scheme matching none of the known ones raises, and the caller then takes the public path."""
    global _attributes_key
    if _attributes_key is not None:
        return _attributes_key
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.resources import Resource

    candidates: list[Callable[[dict[str, Any]], Any]] = [lambda attrs: frozenset(attrs.items())]
    try:
        from opentelemetry.sdk.metrics._internal._view_instrument_match import _hash_attributes
    except ImportError:
        pass
    else:
        candidates.insert(0, _hash_attributes)
    # An explicit resource: no resource detection (it may use threads, and this can run at exit).
    provider = MeterProvider(metric_readers=[InMemoryMetricReader()], resource=Resource({}),
                             shutdown_on_exit=False)
    try:
        probe = provider.get_meter("otel_perf.startup-check").create_histogram("otel_perf.startup_check")
        attributes: dict[str, Any] = {"otel_perf.check": "key", "n": 1}
        probe.record(1.0, attributes)
        found = _storages(probe)
        if found is None:
            raise LookupError("the SDK's histogram has no measurement consumer")
        real, storages = found
        keys = [key for storage in storages.values()
                for vim in storage._get_or_init_view_instrument_match(real) for key in vim._attributes_aggregation]
    finally:
        provider.shutdown()
    for candidate in candidates:
        if keys == [candidate(attributes)]:
            _attributes_key = candidate
            return candidate
    raise LookupError(f"the SDK keys attribute sets in a way otel-perf does not know ({keys!r})")


def merge_histogram(instrument: Any, attributes: Mapping[str, Any], bucket_counts: Sequence[int], total: float,
                    low: float, high: float, bounds: tuple[float, ...],
                    representatives: Callable[[], Iterable[tuple[float, int]]]) -> bool:
    """Add one interval of a histogram into the SDK's storage of ``instrument``, in every reader's storage
    and through each reader's views: the buckets, sum, min and max as they are where the view kept the
    aggregation and its boundaries, else one measurement per value of ``representatives()`` (value,
    count). Returns False when ``instrument`` is not an SDK instrument; raises when the storage is not
    what this otel-perf expects (the caller then records through the public API from now on)."""
    from opentelemetry.sdk.metrics._internal.aggregation import (
        DefaultAggregation,
        _DropAggregation,
        _ExplicitBucketHistogramAggregation,
    )

    found = _storages(instrument)
    if found is None:
        return False
    _hash_attributes = storage_attributes_key()
    real, storages = found
    if hasattr(real, "_is_enabled") and not real._is_enabled():
        return True  # the user's meter configurator disabled this meter: drop, as record() would
    for storage in list(storages.values()):
        for vim in storage._get_or_init_view_instrument_match(real):
            attrs = dict(attributes)
            if vim._view._attribute_keys is not None:
                attrs = {k: v for k, v in attrs.items() if k in vim._view._attribute_keys}
            key = _hash_attributes(attrs)
            aggregation: Any = vim._attributes_aggregation.get(key)
            if aggregation is None:
                with vim._lock:
                    aggregation = vim._attributes_aggregation.get(key)
                    if aggregation is None:
                        factory = vim._view._aggregation
                        if isinstance(factory, DefaultAggregation):
                            factory = vim._instrument_class_aggregation[real.__class__]
                        aggregation = factory._create_aggregation(
                            real, attrs, vim._view._exemplar_reservoir_factory, time_ns()
                        )
                        vim._attributes_aggregation[key] = aggregation
            if isinstance(aggregation, _DropAggregation):
                continue
            if isinstance(aggregation, _ExplicitBucketHistogramAggregation) and aggregation._boundaries == bounds:
                with aggregation._lock:
                    if aggregation._value is None:
                        aggregation._value = aggregation._get_empty_bucket_counts()  # type: ignore[assignment]
                    values: list[int] = aggregation._value  # type: ignore[assignment]
                    for i in range(len(values)):
                        values[i] += bucket_counts[i]
                    aggregation._sum += total  # type: ignore[assignment]
                    if aggregation._record_min_max:
                        aggregation._min = min(aggregation._min, low)
                        aggregation._max = max(aggregation._max, high)
            else:
                # A user view chose another aggregation or other buckets: feed representative values.
                from opentelemetry.context import get_current
                from opentelemetry.sdk.metrics._internal.measurement import Measurement

                now = time_ns()
                for value, count in representatives():
                    for _ in range(count):
                        aggregation.aggregate(Measurement(value, now, real, get_current(), attrs))
    return True


def forget_histogram_points(instrument: Any) -> None:
    """Drop what the SDK's storage holds for ``instrument`` (forked child: those were the parent's).

    Runs in an after-fork hook: takes no lock (one held by a vanished parent thread is never released).
    """
    try:
        found = _storages(instrument)
        if found is None:
            return
        real, storages = found
        for storage in list(storages.values()):
            for vim in storage._instrument_view_instrument_matches.get(real, ()):
                vim._attributes_aggregation = {}
    except Exception:  # the SDK's private storage changed shape: the child keeps the parent's points
        log_once("aggregate-fork-reset", "otel-perf: cannot reset the SDK's histogram storage after fork")
