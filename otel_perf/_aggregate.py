"""Hot-path histograms: aggregated in plain Python, published into the SDK at each collection.

Why this module exists: one SDK ``Histogram.record`` costs here about as much as ``json.loads`` of 1 KB
(``../shared/reference/sdk-overhead-here.md``), so the measurements taken on hot paths (parse calls, pool
jobs, GC pauses) cannot go through the SDK one by one. Instead:

* the hot path updates a per-thread cell: ``[count, sum, min, max, bucket0, bucket1, ...]``, with no lock
  (each thread writes only its own cell; :class:`FixedSeries` is the single-writer variant for the GC
  callback, which must take no lock and allocate nothing);
* at each metric collection, a callback registered on the meter (an observable instrument that emits
  nothing itself) adds what was recorded since the previous publication into the SDK's own histogram
  aggregation for that attribute set, in every reader's storage. The SDK then exports a real histogram
  through the user's views, temporality and exporters, and nothing recorded is lost;
* where the SDK's storage is not the expected one (a non-SDK meter provider, a view that changed the
  aggregation or its buckets), it falls back to recording through the SDK at collection time: one value
  per measurement, chosen inside the measurement's own bucket, so counts stay exact while sums (and the
  placement into a view's different buckets) become approximate.

Publication reaches into the SDK's private metric storage; that is why pyproject.toml pins the SDK's
minor version. Any surprise there switches this module to the fallback, logged once.
"""

from __future__ import annotations

import math
import os
import threading
import weakref
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Mapping, Sequence
from time import time_ns
from typing import Any

from opentelemetry.metrics import CallbackOptions, Histogram, Meter, Observation

from otel_perf._safety import guard, log_once

__all__ = ["AggregatedHistogram", "FixedSeries", "Series", "attributes_key", "take"]

Attributes = Mapping[str, Any]

_COUNT, _SUM, _MIN, _MAX, _BUCKETS = 0, 1, 2, 3, 4


def _new_cell(n_bounds: int) -> list[Any]:
    return [0, 0, math.inf, -math.inf] + [0] * (n_bounds + 1)


def attributes_key(attributes: Attributes) -> tuple[tuple[str, Any], ...]:
    """A hashable, order-independent key for an attribute set."""
    return tuple(sorted(attributes.items()))


def take(entries: list[Any]) -> list[Any]:
    """Remove and return the entries ``entries`` holds now, for a caller that logs raw measurements.

    A hot path can log with one ``list.append`` (atomic: no lock) and have the log recorded in bulk
    (:meth:`Series.record_many`) every few hundred entries and before each publication
    (:meth:`AggregatedHistogram.add_drain`). Entries appended by other threads while this runs stay for
    the next call. Two calls must not overlap (both would take the same entries): callers hold a lock.
    """
    count = len(entries)
    taken = entries[:count]
    del entries[:count]
    return taken


class Series:
    """One attribute set of an :class:`AggregatedHistogram`. ``record`` is the hot path.

    Each thread records into its own cell, so ``record`` takes no lock and loses nothing; cells of
    threads that ended are folded into a base cell at publication, so the set of cells stays bounded.
    """

    __slots__ = ("__weakref__", "_bounds", "_cells", "_local", "_lock", "_retired", "attributes", "key")

    def __init__(self, attributes: Attributes, bounds: Sequence[float]) -> None:
        self.attributes: dict[str, Any] = dict(attributes)
        self.key = attributes_key(attributes)
        self._bounds = tuple(bounds)
        self._local = threading.local()
        self._lock = threading.Lock()  # guards the list of cells, never taken by record()
        self._cells: list[tuple[threading.Thread, list[Any]]] = []
        self._retired = _new_cell(len(self._bounds))

    def _cell(self) -> list[Any]:
        cell = _new_cell(len(self._bounds))
        with self._lock:
            self._cells.append((threading.current_thread(), cell))
        self._local.cell = cell
        return cell

    def record(self, value: float) -> None:
        """Record one measurement (no SDK call, no lock after the thread's first record).

        The cell update below is repeated inline, step for step, in ``FixedSeries.record`` and the GC
        pause callback (hot paths where one more call is a measurable cost): a change to the cell layout
        changes them together.
        """
        try:
            cell = self._local.cell
        except AttributeError:
            cell = self._cell()
        cell[0] += 1
        cell[1] += value
        if value < cell[2]:
            cell[2] = value
        if value > cell[3]:
            cell[3] = value
        cell[bisect_left(self._bounds, value) + 4] += 1

    def record_many(self, values: Sequence[float]) -> None:
        """Record every value of ``values``, as ``record`` would one by one, in one pass over the cell.

        For callers that log raw values on a hot path and record them in bulk (pool jobs, parses; see
        :func:`take`): the values are sorted once, in C, and each bucket's count is then one bisection
        per boundary: about a quarter of the cost of bisecting the boundaries for each value.
        """
        if not values:
            return
        try:
            cell = self._local.cell
        except AttributeError:
            cell = self._cell()
        ordered = sorted(values)
        total = len(ordered)
        cell[0] += total
        cell[1] += sum(ordered)
        if ordered[0] < cell[2]:
            cell[2] = ordered[0]
        if ordered[-1] > cell[3]:
            cell[3] = ordered[-1]
        below = 0  # values at or below the previous boundary
        for index, bound in enumerate(self._bounds):
            upto = bisect_right(ordered, bound)  # bucket i holds (bound[i-1], bound[i]], as in record()
            if upto != below:
                cell[index + 4] += upto - below
                below = upto
                if below == total:
                    return
        cell[len(self._bounds) + 4] += total - below

    def snapshot(self) -> list[Any]:
        """Cumulative totals over all threads: ``[count, sum, min, max, *buckets]``."""
        total = _new_cell(len(self._bounds))
        with self._lock:
            alive: list[tuple[threading.Thread, list[Any]]] = []
            for thread, cell in self._cells:
                if thread.is_alive():
                    alive.append((thread, cell))
                else:
                    _merge_into(self._retired, cell)  # the thread cannot write any more
            self._cells = alive
            _merge_into(total, self._retired)
            for _, cell in alive:
                _merge_into(total, list(cell))
        return total

    def _reset(self) -> None:
        # Called in a forked child: a lock held by another parent thread at fork time stays held, so
        # replace it rather than acquire it.
        self._lock = threading.Lock()
        self._cells = []
        self._retired = _new_cell(len(self._bounds))
        self._local = threading.local()


class FixedSeries:
    """A single-writer series with one preallocated cell: no lock, no allocation per record.

    For callers that guarantee one writer at a time, such as ``gc.callbacks`` (collections do not
    overlap). Also keeps the largest value since :meth:`take_max` was last called.
    """

    __slots__ = ("__weakref__", "_bounds", "_cell", "_window", "attributes", "key")

    def __init__(self, attributes: Attributes, bounds: Sequence[float]) -> None:
        self.attributes = dict(attributes)
        self.key = attributes_key(attributes)
        self._bounds = tuple(bounds)
        self._cell = _new_cell(len(self._bounds))
        self._window = [0.0]  # the largest value since take_max(), in a list so record() can be inlined

    def record(self, value: float) -> None:
        cell = self._cell
        cell[0] += 1
        cell[1] += value
        if value < cell[2]:
            cell[2] = value
        if value > cell[3]:
            cell[3] = value
        if value > self._window[0]:
            self._window[0] = value
        cell[bisect_left(self._bounds, value) + 4] += 1

    def parts(self) -> tuple[list[Any], tuple[float, ...], list[float]]:
        """``(cell, boundaries, window)``, for a caller that inlines :meth:`record` step for step.

        The GC pause callback does: there a method call is a measurable share of what each collection
        costs. The objects stay the same for the series' lifetime (reset clears them in place).
        """
        return self._cell, self._bounds, self._window

    def take_max(self) -> float:
        """The largest value recorded since the previous call (0.0 when none), and start a new window."""
        value, self._window[0] = self._window[0], 0.0
        return value

    def snapshot(self) -> list[Any]:
        return list(self._cell)

    def _reset(self) -> None:
        self._cell[:] = _new_cell(len(self._bounds))
        self._window[0] = 0.0


def _merge_into(total: list[Any], cell: list[Any]) -> None:
    total[0] += cell[0]
    total[1] += cell[1]
    total[2] = min(total[2], cell[2])
    total[3] = max(total[3], cell[3])
    for i in range(_BUCKETS, len(total)):
        total[i] += cell[i]


_all_histograms: weakref.WeakSet[AggregatedHistogram] = weakref.WeakSet()
# meter -> the bindings its publication hook publishes (see _Binding.__init__)
_publish_hooks: weakref.WeakKeyDictionary[Meter, weakref.WeakSet[_Binding]] = weakref.WeakKeyDictionary()
_hooks_lock = threading.Lock()


class AggregatedHistogram:
    """A histogram recorded in plain Python and published as a real OTel histogram at collection.

    Usage::

        hist = AggregatedHistogram("otel_perf.parse.duration", "s", "Duration of parses", bounds)
        series = hist.series({"otel_perf.parser.name": "json"})   # once, outside the hot path
        series.record(0.000012)                                     # hot path
        hist.bind(meter)                                            # when instrumenting
    """

    def __init__(self, name: str, unit: str, description: str, boundaries: Sequence[float]) -> None:
        self.name = name
        self.unit = unit
        self.description = description
        self.boundaries = tuple(float(b) for b in boundaries)
        self._series: dict[tuple[tuple[str, Any], ...], Series | FixedSeries] = {}
        self._lock = threading.Lock()
        self._bindings: list[_Binding] = []
        self._drains: list[Callable[[], None]] = []
        _all_histograms.add(self)

    def series(self, attributes: Attributes) -> Series:
        """The series for ``attributes`` (created once; keep it for the hot path)."""
        key = attributes_key(attributes)
        found = self._series.get(key)
        if found is None:
            with self._lock:
                found = self._series.get(key)
                if found is None:
                    found = Series(attributes, self.boundaries)
                    self._series[key] = found
        assert isinstance(found, Series)
        return found

    def fixed_series(self, attributes: Attributes) -> FixedSeries:
        """A preallocated single-writer series (see :class:`FixedSeries`)."""
        key = attributes_key(attributes)
        with self._lock:
            found = self._series.get(key)
            if found is None:
                found = FixedSeries(attributes, self.boundaries)
                self._series[key] = found
        assert isinstance(found, FixedSeries)
        return found

    def record(self, value: float, attributes: Attributes) -> None:
        """Record with an attribute set known only at call time (looks the series up each time)."""
        self.series(attributes).record(value)

    def add_drain(self, drain: Callable[[], None]) -> None:
        """Call ``drain`` before every publication: it records what its owner buffered.

        For callers that keep raw measurements on a hot path and record them in bulk (``record_many``),
        so that a collection publishes everything recorded before it. Adding the same drain twice is
        harmless.
        """
        with self._lock:
            if drain not in self._drains:
                self._drains.append(drain)

    def drain(self) -> None:
        """Run every drain (each one guarded: a failing drain does not stop publication)."""
        for drain in list(self._drains):
            _run_drain(drain)

    def all_series(self) -> list[Series | FixedSeries]:
        with self._lock:
            return list(self._series.values())

    def bind(self, meter: Meter) -> Histogram:
        """Create the real SDK histogram on ``meter`` and publish into it at every collection.

        Binding twice to the same meter is harmless. What was recorded before binding is published at
        the first collection.
        """
        with self._lock:
            for binding in self._bindings:
                if binding.meter is meter:
                    return binding.instrument
            binding = _Binding(self, meter)
            self._bindings.append(binding)
            return binding.instrument

    def unbind(self, meter: Meter | None = None) -> None:
        """Stop publishing into ``meter`` (all meters when None)."""
        with self._lock:
            keep = []
            for binding in self._bindings:
                if meter is None or binding.meter is meter:
                    binding.active = False
                else:
                    keep.append(binding)
            self._bindings = keep

    def publish(self) -> None:
        """Publish pending deltas into every bound meter now (collection does this by itself)."""
        with self._lock:
            bindings = list(self._bindings)
        for binding in bindings:
            binding.publish()

    def _reset(self) -> None:
        self._lock = threading.Lock()  # forked child: see Series._reset
        for series in list(self._series.values()):
            series._reset()
        for binding in self._bindings:
            binding._lock = threading.Lock()
            binding.published.clear()
            _forget_sdk_points(binding.instrument)


@guard
def _run_drain(drain: Callable[[], None]) -> None:
    drain()


class _Binding:
    """Publication of one AggregatedHistogram into one meter's SDK histogram."""

    def __init__(self, histogram: AggregatedHistogram, meter: Meter) -> None:
        self.histogram = histogram
        self.meter = meter
        self.active = True
        self.published: dict[tuple[tuple[str, Any], ...], list[Any]] = {}
        self._lock = threading.Lock()
        self.instrument = meter.create_histogram(
            histogram.name,
            unit=histogram.unit,
            description=histogram.description,
            explicit_bucket_boundaries_advisory=list(histogram.boundaries),
        )
        # An observable instrument whose callback publishes and observes nothing: the SDK calls every
        # observable callback at the start of a collection, before it reads any storage, for every
        # reader. One hook per meter publishes all the meter's bindings: each observable instrument costs
        # a collection about as much as an observation (benchmarks/instrumentations/test_runtime.py,
        # runtime-collection-paired). A second create_observable_gauge of the same name on the same
        # meter would return the first instrument and drop the new callback, so the hook is created once
        # per meter and publishes every binding registered under it since (re-instrumenting on the same
        # meter keeps publishing).
        with _hooks_lock:
            bindings = _publish_hooks.get(meter)
            if bindings is None:
                bindings = _publish_hooks[meter] = weakref.WeakSet()
                hooked = bindings

                def _publish_callback(options: CallbackOptions) -> Iterable[Observation]:
                    with _hooks_lock:
                        current = list(hooked)
                    for binding in current:
                        if binding.active:
                            binding.publish()
                    return ()

                meter.create_observable_gauge(
                    "otel_perf.internal.publish",
                    callbacks=[_publish_callback],
                    description="otel-perf publication hook; emits no data",
                )
            bindings.add(self)

    @guard
    def publish(self) -> None:
        self.histogram.drain()
        with self._lock:
            for series in self.histogram.all_series():
                total = series.snapshot()
                previous = self.published.get(series.key)
                if previous is None:
                    delta = list(total)
                else:
                    delta = [total[i] - previous[i] for i in range(len(total))]
                    delta[_MIN], delta[_MAX] = total[_MIN], total[_MAX]
                if not any(delta[_BUCKETS:]):
                    continue
                self.published[series.key] = total
                _publish_delta(self.instrument, series.attributes, delta, self.histogram.boundaries)


_fallback_only = False


def _publish_delta(instrument: Any, attributes: dict[str, Any], delta: list[Any],
                   bounds: tuple[float, ...]) -> None:
    global _fallback_only
    if not _fallback_only:
        try:
            if _merge_into_sdk(instrument, attributes, delta, bounds):
                return
        except Exception as exc:  # the SDK's private storage changed shape: use the public API from now on
            _fallback_only = True
            log_once("aggregate-fallback",
                     "otel-perf: cannot publish %s into the SDK's storage (%s); recording through the SDK "
                     "at collection time instead (counts stay exact, sums become approximate)",
                     instrument.name if hasattr(instrument, "name") else instrument, exc)
    _record_representatives(instrument, attributes, delta, bounds)


def _sdk_storages(instrument: Any) -> tuple[Any, Any] | None:
    """(real SDK instrument, reader storages) or None when this is not an SDK instrument."""
    real = getattr(instrument, "_real_instrument", None) or instrument  # proxy instruments delegate
    consumer = getattr(real, "_measurement_consumer", None)
    if consumer is None:
        return None
    return real, consumer._reader_storages


_attributes_key: Callable[[dict[str, Any]], Any] | None = None


def _sdk_attributes_key() -> Callable[[dict[str, Any]], Any]:
    """How this SDK's metric storage keys an attribute set (private, and changed across releases:
    ``frozenset(attributes.items())`` up to about 1.40, ``_hash_attributes`` later). Found once, at the first
    publication, by recording one value into a private MeterProvider and reading the key it made; a scheme
    matching none of the known ones raises, and the caller then takes the public path."""
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
        found = _sdk_storages(probe)
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


def _merge_into_sdk(instrument: Any, attributes: dict[str, Any], delta: list[Any],
                    bounds: tuple[float, ...]) -> bool:
    from opentelemetry.sdk.metrics._internal.aggregation import (
        DefaultAggregation,
        _DropAggregation,
        _ExplicitBucketHistogramAggregation,
    )

    found = _sdk_storages(instrument)
    if found is None:
        return False
    _hash_attributes = _sdk_attributes_key()
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
                        values[i] += delta[_BUCKETS + i]
                    aggregation._sum += delta[_SUM]
                    if aggregation._record_min_max:
                        aggregation._min = min(aggregation._min, delta[_MIN])
                        aggregation._max = max(aggregation._max, delta[_MAX])
            else:
                # A user view chose another aggregation or other buckets: feed representative values.
                from opentelemetry.context import get_current
                from opentelemetry.sdk.metrics._internal.measurement import Measurement

                now = time_ns()
                for value, count in _representatives(delta, bounds):
                    for _ in range(count):
                        aggregation.aggregate(Measurement(value, now, real, get_current(), attrs))
    return True


def _forget_sdk_points(instrument: Any) -> None:
    """Drop what the SDK's storage holds for ``instrument`` (forked child: those were the parent's).

    Runs in an after-fork hook: takes no lock (one held by a vanished parent thread is never released).
    """
    try:
        found = _sdk_storages(instrument)
        if found is None:
            return
        real, storages = found
        for storage in list(storages.values()):
            for vim in storage._instrument_view_instrument_matches.get(real, ()):
                vim._attributes_aggregation = {}
    except Exception:  # the SDK's private storage changed shape: the child keeps the parent's points
        log_once("aggregate-fork-reset", "otel-perf: cannot reset the SDK's histogram storage after fork")


def _representatives(delta: list[Any], bounds: tuple[float, ...]) -> list[tuple[float, int]]:
    """One value per non-empty bucket, inside that bucket, with its count."""
    out = []
    low_all, high_all = delta[_MIN], delta[_MAX]
    for i, count in enumerate(delta[_BUCKETS:]):
        if not count:
            continue
        low = bounds[i - 1] if i > 0 else min(low_all, bounds[0] if bounds else low_all)
        high = bounds[i] if i < len(bounds) else max(high_all, low)
        low = max(low, low_all) if math.isfinite(low_all) else low
        high = min(high, high_all) if math.isfinite(high_all) else high
        out.append(((low + high) / 2 if high >= low else high, count))
    return out


def _record_representatives(instrument: Any, attributes: dict[str, Any], delta: list[Any],
                            bounds: tuple[float, ...]) -> None:
    for value, count in _representatives(delta, bounds):
        for _ in range(count):
            instrument.record(value, attributes)


def _reset_all_after_fork() -> None:
    # A forked child reports its own process: what the parent recorded stays with the parent.
    for histogram in list(_all_histograms):
        histogram._reset()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_all_after_fork)
