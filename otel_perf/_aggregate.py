"""Hot-path histograms: aggregated in plain Python, published into the SDK at each collection.

Why this module exists: one SDK ``Histogram.record`` costs here about as much as ``json.loads`` of 1 KB
(the ``sdk-direct`` twins of ``benchmarks/instrumentations/test_parsers.py``), so the measurements taken
on hot paths (parse calls, pool jobs, GC pauses) cannot go through the SDK one by one. Instead:

* the hot path updates a per-thread cell: ``[count, sum, min, max, bucket0, bucket1, ...]``, with no lock
  (each thread writes only its own cell; :class:`FixedSeries` is the single-writer variant for the GC
  callback, which must take no lock and allocate nothing). Count, sum and buckets only grow; min and max
  are those of the current *interval*: each publication takes them and starts the next interval, and the
  run's min and max are derived from the intervals at publication, never on the hot path;
* at each metric collection, a callback registered on the meter (an observable instrument that emits
  nothing itself) adds what was recorded since the previous publication (count, sum, buckets, and that
  interval's min and max) into the SDK's own histogram aggregation for that attribute set, in every
  reader's storage. The SDK then exports a real histogram through the user's views, temporality and
  exporters: a delta reader gets each interval's own points, a cumulative one the run's, and nothing
  recorded is lost. Several meters bound to one histogram each get every interval once;
* where the SDK's storage is not the expected one (a non-SDK meter provider, a view that changed the
  aggregation or its buckets), it falls back to recording through the SDK at collection time: one value
  per measurement, chosen inside the measurement's own bucket, so counts stay exact while sums (and the
  placement into a view's different buckets) become approximate.

Publication reaches into the SDK's private metric storage (``otel_perf._sdk_internals``, with the other
private names otel-perf uses); that is why pyproject.toml pins the SDK's minor version. Any surprise there
switches this module to the fallback, logged once.

Consistency without a lock: a record updates its bucket first (the one call, ``bisect``), then count, sum,
min and max with no call in between, and a publication copies a cell and resets its min and max with no
call in between either. CPython 3.11 and newer (with the GIL) switch threads, run signal handlers and run
the collector only at function calls and entries and at backward jumps, so a publication sees a record
whole or not at all. On 3.10 a record that races a publication may have its sum, min or max counted in the
neighbouring interval (its bucket, and so the count, in one of them; the totals stay exact); a published
min or max is always kept inside its interval's lowest and highest non-empty buckets.
"""

from __future__ import annotations

import math
import os
import threading
import weakref
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Mapping, Sequence
from operator import add
from typing import Any

from opentelemetry.metrics import CallbackOptions, Histogram, Meter, Observation

from otel_perf._safety import guard, log_once
from otel_perf._sdk_internals import forget_histogram_points, merge_histogram

__all__ = ["AggregatedHistogram", "FixedSeries", "Series", "attributes_key", "take"]

Attributes = Mapping[str, Any]

_COUNT, _SUM, _MIN, _MAX, _BUCKETS = 0, 1, 2, 3, 4
# Bound once: resetting an interval's min and max must not allocate (a float allocation between copying a
# cell and resetting it is harmless, but a container one could run the collector and its GC callback).
_INF = math.inf
_NEG_INF = -math.inf


def _new_cell(n_bounds: int) -> list[Any]:
    return [0, 0, _INF, _NEG_INF] + [0] * (n_bounds + 1)


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


class _Intervals:
    """What :class:`Series` and :class:`FixedSeries` share: turning cumulative cells into intervals.

    ``_taken`` holds the totals (count, sum, buckets) at the previous :meth:`take`; ``_low``/``_high`` the
    smallest and largest value of every interval taken so far (the run's min and max, derived here rather
    than on the hot path). Subclasses provide ``_take_cells()``: the totals now, with each cell's interval
    min and max, which it resets.
    """

    __slots__ = ("_high", "_low", "_taken")

    _bounds: tuple[float, ...]
    _taken: list[Any]
    _low: float
    _high: float

    def _take_cells(self) -> list[Any]:
        raise NotImplementedError

    def _read_cells(self) -> list[Any]:
        raise NotImplementedError

    def take(self) -> list[Any] | None:
        """What was recorded since the previous call: ``[count, sum, min, max, *buckets]`` of that interval
        alone, or None when nothing was. Callers serialise calls (the histogram's publication lock)."""
        total = self._take_cells()
        taken = self._taken
        interval = [total[i] - taken[i] for i in range(len(total))]
        interval[_MIN], interval[_MAX] = total[_MIN], total[_MAX]
        self._taken = total  # its min and max are unused: the run's are _low and _high
        if not any(interval[_BUCKETS:]):
            return None
        _settle_min_max(interval, self._bounds)
        self._low = min(self._low, interval[_MIN])
        self._high = max(self._high, interval[_MAX])
        return interval

    def total(self) -> list[Any]:
        """Everything taken so far (what a binding made after those intervals starts from)."""
        total = list(self._taken)
        total[_MIN], total[_MAX] = self._low, self._high
        return total

    def snapshot(self) -> list[Any]:
        """Cumulative totals over all threads now: ``[count, sum, min, max, *buckets]`` (changes nothing)."""
        total = self._read_cells()
        total[_MIN] = min(total[_MIN], self._low)
        total[_MAX] = max(total[_MAX], self._high)
        return total

    def _reset_intervals(self) -> None:
        self._taken = _new_cell(len(self._bounds))
        self._low = _INF
        self._high = _NEG_INF


class Series(_Intervals):
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
        # (weak reference to the recording thread, its cell): a series must not keep ended threads alive
        # until the next publication (a program that counts its threads, as CPython's tests do, would
        # see them dangling).
        self._cells: list[tuple[weakref.ref[threading.Thread], list[Any]]] = []
        self._retired = _new_cell(len(self._bounds))
        self._reset_intervals()

    def _cell(self) -> list[Any]:
        cell = _new_cell(len(self._bounds))
        with self._lock:
            self._cells.append((weakref.ref(threading.current_thread()), cell))
        self._local.cell = cell
        return cell

    def record(self, value: float) -> None:
        """Record one measurement (no SDK call, no lock after the thread's first record).

        The cell update below is repeated inline, step for step, in ``FixedSeries.record`` and the GC
        pause callback (hot paths where one more call is a measurable cost): a change to the cell layout
        changes them together. The bucket comes first: after the ``bisect`` call, the rest of the update
        makes no call, so a publication never sees half of it (module docstring).
        """
        try:
            cell = self._local.cell
        except AttributeError:
            cell = self._cell()
        cell[bisect_left(self._bounds, value) + 4] += 1
        cell[0] += 1
        cell[1] += value
        if value < cell[2]:
            cell[2] = value
        if value > cell[3]:
            cell[3] = value

    def record_many(self, values: Sequence[float]) -> None:
        """Record every value of ``values``, as ``record`` would one by one, in one pass over the cell.

        For callers that log raw values on a hot path and record them in bulk (pool jobs, parses; see
        :func:`take`): the values are sorted once, in C, and each bucket's count is then one bisection
        per boundary: about a quarter of the cost of bisecting the boundaries for each value. Everything
        is computed first; the cell is then updated with no call in between (see ``record``).
        """
        if not values:
            return
        try:
            cell = self._local.cell
        except AttributeError:
            cell = self._cell()
        ordered = sorted(values)
        total = len(ordered)
        added = sum(ordered)
        counts = [0] * (len(self._bounds) + 1)
        below = 0  # values at or below the previous boundary
        for index, bound in enumerate(self._bounds):
            upto = bisect_right(ordered, bound)  # bucket i holds (bound[i-1], bound[i]], as in record()
            counts[index] = upto - below
            below = upto
            if below == total:
                break
        else:
            counts[-1] = total - below
        buckets = list(map(add, cell[_BUCKETS:], counts))
        low, high = ordered[0], ordered[-1]
        cell[_BUCKETS:] = buckets
        cell[0] += total
        cell[1] += added
        if low < cell[2]:
            cell[2] = low
        if high > cell[3]:
            cell[3] = high

    def _take_cells(self) -> list[Any]:
        total = _new_cell(len(self._bounds))
        inf, neg_inf = _INF, _NEG_INF
        with self._lock:
            alive: list[tuple[weakref.ref[threading.Thread], list[Any]]] = []
            for ref, cell in self._cells:
                thread = ref()
                if thread is not None and thread.is_alive():
                    alive.append((ref, cell))
                    copy = cell[:]  # then reset the interval's min and max, with no call in between
                    cell[_MIN] = inf
                    cell[_MAX] = neg_inf
                    _merge_into(total, copy)
                else:
                    _merge_into(self._retired, cell)  # the thread cannot write any more
            self._cells = alive
            _merge_into(total, self._retired)
            self._retired[_MIN], self._retired[_MAX] = inf, neg_inf
        return total

    def _read_cells(self) -> list[Any]:
        total = _new_cell(len(self._bounds))
        with self._lock:
            alive: list[tuple[weakref.ref[threading.Thread], list[Any]]] = []
            for ref, cell in self._cells:
                thread = ref()
                if thread is not None and thread.is_alive():
                    alive.append((ref, cell))
                    _merge_into(total, cell[:])
                else:
                    _merge_into(self._retired, cell)  # the thread cannot write any more
            self._cells = alive
            _merge_into(total, self._retired)
        return total

    def _reset(self) -> None:
        # Called in a forked child: a lock held by another parent thread at fork time stays held, so
        # replace it rather than acquire it.
        self._lock = threading.Lock()
        self._cells = []
        self._retired = _new_cell(len(self._bounds))
        self._local = threading.local()
        self._reset_intervals()


class FixedSeries(_Intervals):
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
        self._reset_intervals()

    def record(self, value: float) -> None:
        cell = self._cell
        cell[bisect_left(self._bounds, value) + 4] += 1
        cell[0] += 1
        cell[1] += value
        if value < cell[2]:
            cell[2] = value
        if value > cell[3]:
            cell[3] = value
        if value > self._window[0]:
            self._window[0] = value

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

    def _take_cells(self) -> list[Any]:
        cell = self._cell
        copy = cell[:]  # then reset the interval's min and max, with no call (nor collection) in between
        cell[_MIN] = _INF
        cell[_MAX] = _NEG_INF
        return copy

    def _read_cells(self) -> list[Any]:
        return self._cell[:]

    def _reset(self) -> None:
        self._cell[:] = _new_cell(len(self._bounds))
        self._window[0] = 0.0
        self._reset_intervals()


def _merge_into(total: list[Any], cell: list[Any]) -> None:
    total[0] += cell[0]
    total[1] += cell[1]
    total[2] = min(total[2], cell[2])
    total[3] = max(total[3], cell[3])
    for i in range(_BUCKETS, len(total)):
        total[i] += cell[i]


def _settle_min_max(interval: list[Any], bounds: tuple[float, ...]) -> None:
    """Keep an interval's min and max inside its lowest and highest non-empty buckets.

    They are there already unless a record raced the publication on Python 3.10 (module docstring);
    then the nearest bucket edge stands in for the value the interval lost.
    """
    buckets = interval[_BUCKETS:]
    first = next(i for i, n in enumerate(buckets) if n)
    last = len(buckets) - 1 - next(i for i, n in enumerate(reversed(buckets)) if n)
    low_edge = bounds[first - 1] if first > 0 else _NEG_INF
    high_edge = bounds[first] if first < len(bounds) else _INF
    if not low_edge < interval[_MIN] <= high_edge:
        interval[_MIN] = high_edge if math.isfinite(high_edge) else low_edge
    low_edge = bounds[last - 1] if last > 0 else _NEG_INF
    high_edge = bounds[last] if last < len(bounds) else _INF
    if not low_edge < interval[_MAX] <= high_edge:
        interval[_MAX] = low_edge if math.isfinite(low_edge) else high_edge
    if interval[_MAX] < interval[_MIN]:
        interval[_MAX] = interval[_MIN]


def _add_interval(pending: list[Any], interval: list[Any]) -> None:
    pending[_COUNT] += interval[_COUNT]
    pending[_SUM] += interval[_SUM]
    pending[_MIN] = min(pending[_MIN], interval[_MIN])
    pending[_MAX] = max(pending[_MAX], interval[_MAX])
    for i in range(_BUCKETS, len(pending)):
        pending[i] += interval[i]


_all_histograms: weakref.WeakSet[AggregatedHistogram] = weakref.WeakSet()
# meter -> the bindings its publication hook publishes (see _Binding.__init__)
_publish_hooks: weakref.WeakKeyDictionary[Meter, weakref.WeakSet[_Binding]] = weakref.WeakKeyDictionary()
_hooks_lock = threading.Lock()  # replaced in a forked child (_reset_all_after_fork)


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
        # Serialises taking intervals and publishing them: a collection that finds another publication
        # under way waits for it, so it exports everything recorded before it started.
        self._publish_lock = threading.Lock()
        self._bindings: list[_Binding] = []
        self._dormant: list[_Binding] = []  # unbound; what they have still to publish waits for a new bind
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
            for binding in self._dormant:
                if binding.meter is meter:  # bound again (instrumented again): publish from where it stopped
                    self._dormant.remove(binding)
                    self._bindings.append(binding)
                    binding.active = True
                    return binding.instrument
        # Made with none of our locks held: the SDK takes its collection lock to register an instrument,
        # and holds that lock while it runs the publication callbacks, which take ours.
        binding = _Binding(self, meter)
        with self._publish_lock:
            with self._lock:
                for other in self._bindings:
                    if other.meter is meter:  # another thread bound the same meter meanwhile
                        binding.active = False
                        return other.instrument
            self._take_intervals()  # the bindings there are get what was recorded until now...
            for series in self.all_series():  # ...and the new one starts from everything taken
                total = series.total()
                if any(total[_BUCKETS:]):
                    binding.pending[series.key] = (series, total)
            with self._lock:
                self._bindings.append(binding)
        return binding.instrument

    def unbind(self, meter: Meter | None = None) -> None:
        """Stop publishing into ``meter`` (all meters when None).

        The binding stays dormant: the SDK keeps the instrument and what it received, so binding the same
        meter again publishes from where this one stopped, never the same measurements twice.
        """
        with self._lock:
            keep = []
            for binding in self._bindings:
                if meter is None or binding.meter is meter:
                    binding.active = False
                    self._dormant.append(binding)
                else:
                    keep.append(binding)
            self._bindings = keep

    def publish(self) -> None:
        """Publish pending intervals into every bound meter now (collection does this by itself)."""
        with self._lock:
            bindings = list(self._bindings)
        for binding in bindings:
            binding.publish()

    def _take_intervals(self) -> None:
        """Take every series' interval and add it to what each binding has still to publish.

        Callers hold ``_publish_lock``. Each binding publishes when its own meter is collected, so each
        gets every interval once, with that interval's min and max, however the collections interleave.
        """
        with self._lock:
            bindings = self._bindings + self._dormant
            series_now = list(self._series.values())
        for series in series_now:
            interval = series.take()
            if interval is None:
                continue
            for binding in bindings:
                entry = binding.pending.get(series.key)
                if entry is None:
                    binding.pending[series.key] = (series, list(interval))
                else:
                    _add_interval(entry[1], interval)

    def _reset(self) -> None:
        # Forked child: locks held by a parent thread at fork time stay held, so they are replaced (see
        # Series._reset), and the SDK's storage forgets the parent's points.
        self._lock = threading.Lock()
        self._publish_lock = threading.Lock()
        for series in list(self._series.values()):
            series._reset()
        for binding in self._bindings + self._dormant:
            binding.pending = {}
            forget_histogram_points(binding.instrument)


@guard
def _run_drain(drain: Callable[[], None]) -> None:
    drain()


class _Binding:
    """Publication of one AggregatedHistogram into one meter's SDK histogram."""

    def __init__(self, histogram: AggregatedHistogram, meter: Meter) -> None:
        self.histogram = histogram
        self.meter = meter
        self.active = True
        # series key -> (series, what to publish next: [count, sum, min, max, *buckets])
        self.pending: dict[tuple[tuple[str, Any], ...], tuple[Series | FixedSeries, list[Any]]] = {}
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
        # The hook is created outside the lock: the SDK registers it under its collection lock, which a
        # collection holds while it runs this very callback (which takes the hook lock).
        with _hooks_lock:
            bindings = _publish_hooks.get(meter)
            created = bindings is None
            if bindings is None:
                bindings = _publish_hooks[meter] = weakref.WeakSet()
            bindings.add(self)
        if created:
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

    @guard
    def publish(self) -> None:
        histogram = self.histogram
        histogram.drain()
        with histogram._publish_lock:
            histogram._take_intervals()
            pending, self.pending = self.pending, {}
            for series, interval in pending.values():
                _publish_delta(self.instrument, series.attributes, interval, histogram.boundaries)


_fallback_only = False


def _publish_delta(instrument: Any, attributes: dict[str, Any], delta: list[Any],
                   bounds: tuple[float, ...]) -> None:
    global _fallback_only
    if not _fallback_only:
        try:
            if merge_histogram(instrument, attributes, delta[_BUCKETS:], delta[_SUM], delta[_MIN], delta[_MAX],
                               bounds, lambda: _representatives(delta, bounds)):
                return
        except Exception as exc:  # the SDK's private storage changed shape: use the public API from now on
            _fallback_only = True
            log_once("aggregate-fallback",
                     "otel-perf: cannot publish %s into the SDK's storage (%s); recording through the SDK "
                     "at collection time instead (counts stay exact, sums become approximate)",
                     instrument.name if hasattr(instrument, "name") else instrument, exc)
    _record_representatives(instrument, attributes, delta, bounds)


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
    # A forked child reports its own process: what the parent recorded stays with the parent. The hook
    # lock is replaced like every lock here: one held by a parent thread at fork time is never released.
    global _hooks_lock
    _hooks_lock = threading.Lock()
    for histogram in list(_all_histograms):
        histogram._reset()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_all_after_fork)
