"""Hot-path aggregation: what is exported equals what was measured, exactly, from many threads."""

from __future__ import annotations

import gc
import os
import random
import threading
import time
import weakref
from bisect import bisect_left
from typing import Any

import pytest
from opentelemetry.sdk.metrics import Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View

from otel_perf import _safety
from otel_perf._aggregate import AggregatedHistogram
from otel_perf.testing import metric_points

BOUNDS = (0.125, 0.5, 1.0)


def _expected(values: list[float]) -> tuple[int, float, float, float, list[int]]:
    buckets = [0] * (len(BOUNDS) + 1)
    for v in values:
        buckets[bisect_left(BOUNDS, v)] += 1
    return len(values), sum(values), min(values), max(values), buckets


def _dyadic(rng: random.Random, n: int) -> list[float]:
    # Multiples of 1/1024 below 2: float sums of these are exact in any order.
    return [rng.randrange(0, 2048) / 1024 for _ in range(n)]


def test_threads_record_exactly_and_every_reader_gets_everything() -> None:
    """Four threads record while collections run; two readers each export exactly what was recorded."""
    r1, r2 = InMemoryMetricReader(), InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[r1, r2])
    hist = AggregatedHistogram("test.duration", "s", "test", BOUNDS)
    hist.bind(provider.get_meter("t"))
    recorded: list[float] = []
    lock = threading.Lock()
    stop = threading.Event()

    def collector() -> None:
        while not stop.is_set():
            r1.collect()

    def worker(seed: int) -> None:
        series = hist.series({"k": "v"})
        values = _dyadic(random.Random(seed), 20_000)
        for v in values:
            series.record(v)
        with lock:
            recorded.extend(values)

    background = threading.Thread(target=collector)
    background.start()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    background.join()

    count, total, low, high, buckets = _expected(recorded)
    for reader in (r1, r2):
        (point,) = metric_points(reader, "test.duration")
        assert point.count == count == 80_000
        assert point.sum == total
        assert (point.min, point.max) == (low, high)
        assert list(point.bucket_counts) == buckets
        assert tuple(point.explicit_bounds) == BOUNDS
        assert dict(point.attributes) == {"k": "v"}
    provider.shutdown()


def test_records_before_binding_are_published_at_first_collection() -> None:
    hist = AggregatedHistogram("test.early", "s", "test", BOUNDS)
    hist.series({}).record(0.25)
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    hist.bind(provider.get_meter("t"))
    (point,) = metric_points(reader, "test.early")
    assert point.count == 1 and point.sum == 0.25
    provider.shutdown()


def test_delta_temporality_reader_gets_each_value_once() -> None:
    reader = InMemoryMetricReader(preferred_temporality={Histogram: AggregationTemporality.DELTA})
    provider = MeterProvider(metric_readers=[reader])
    hist = AggregatedHistogram("test.delta", "s", "test", BOUNDS)
    hist.bind(provider.get_meter("t"))
    series = hist.series({})
    series.record(0.25)
    (first,) = metric_points(reader, "test.delta")
    series.record(0.75)
    series.record(0.75)
    (second,) = metric_points(reader, "test.delta")
    assert (first.count, first.sum) == (1, 0.25)
    assert (second.count, second.sum) == (2, 1.5)
    assert metric_points(reader, "test.delta") == []  # nothing new, nothing exported
    provider.shutdown()


def test_attribute_sets_stay_separate() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    hist = AggregatedHistogram("test.attrs", "s", "test", BOUNDS)
    hist.bind(provider.get_meter("t"))
    hist.series({"parser": "json"}).record(0.25)
    hist.record(2.0, {"parser": "json", "error.type": "ValueError"})
    points = {tuple(sorted(p.attributes.items())): p for p in metric_points(reader, "test.attrs")}
    assert points[(("parser", "json"),)].count == 1
    assert points[(("error.type", "ValueError"), ("parser", "json"))].bucket_counts[-1] == 1
    provider.shutdown()


def test_user_view_with_other_buckets_keeps_counts_exact() -> None:
    """A view that changes the buckets cannot take our aggregate as is: the count still comes out exact
    (bucket placement and sum are then approximations from one representative value per bucket)."""
    reader = InMemoryMetricReader()
    view = View(instrument_name="test.view", aggregation=ExplicitBucketHistogramAggregation([0.3, 3.0]))
    provider = MeterProvider(metric_readers=[reader], views=[view])
    hist = AggregatedHistogram("test.view", "s", "test", BOUNDS)
    hist.bind(provider.get_meter("t"))
    series = hist.series({})
    for v in (0.1, 0.1, 0.7, 5.0):
        series.record(v)
    (point,) = metric_points(reader, "test.view")
    assert point.count == 4
    assert sum(point.bucket_counts) == 4
    assert point.bucket_counts[0] == 2  # both 0.1s: their representative stays inside (0, 0.125]
    provider.shutdown()


def test_cells_of_finished_threads_are_folded() -> None:
    """Many short-lived threads do not grow the per-thread state without bound, and lose nothing."""
    hist = AggregatedHistogram("test.threads", "s", "test", BOUNDS)
    series = hist.series({})
    for _ in range(50):
        t = threading.Thread(target=series.record, args=(0.5,))
        t.start()
        t.join()
    snapshot = series.snapshot()
    assert snapshot[0] == 50 and snapshot[1] == 25.0
    assert len(series._cells) == 0


def test_fixed_series_window_max() -> None:
    hist = AggregatedHistogram("test.fixed", "s", "test", BOUNDS)
    fixed = hist.fixed_series({"gen": 0})
    fixed.record(0.25)
    fixed.record(0.75)
    assert fixed.take_max() == 0.75
    assert fixed.take_max() == 0.0
    assert fixed.snapshot()[0] == 2


def test_unbind_stops_publication() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    meter = provider.get_meter("t")
    hist = AggregatedHistogram("test.unbind", "s", "test", BOUNDS)
    hist.bind(meter)
    assert hist.bind(meter) is hist.bind(meter)  # binding twice is harmless
    hist.unbind(meter)
    hist.series({}).record(0.25)
    assert metric_points(reader, "test.unbind") == []
    provider.shutdown()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_starts_from_zero() -> None:
    """A forked child reports its own process: the parent's measurements stay with the parent."""
    hist = AggregatedHistogram("test.fork", "s", "test", BOUNDS)
    series = hist.series({})
    series.record(0.25)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os.close(read)
        os.write(write, str(series.snapshot()[0]).encode())
        os._exit(0)
    os.close(write)
    child_count = os.read(read, 100).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert child_count == "0"
    assert series.snapshot()[0] == 1


def test_record_many_equals_recording_each_value() -> None:
    hist = AggregatedHistogram("test.many", "s", "test", BOUNDS)
    one, many = hist.series({"how": "one"}), hist.series({"how": "many"})
    values = [0.3, 0.05, 2.0, 0.125, 0.7, 0.0, 0.5, 1.0, 1.0000001, 0.49]  # boundaries included
    for value in values:
        one.record(value)
    many.record_many(values)
    many.record_many([])
    assert many.snapshot() == one.snapshot()
    low = hist.series({"how": "low"})
    low.record_many([0.01, 0.02])  # every value in the first bucket
    assert low.snapshot()[4:] == [2, 0, 0, 0]
    rng = random.Random(7)
    sample = [rng.choice([rng.uniform(0, 1.5), *BOUNDS]) for _ in range(500)]
    one, many = hist.series({"how": "one-random"}), hist.series({"how": "many-random"})
    for value in sample:
        one.record(value)
    many.record_many(sample)
    assert many.snapshot()[4:] == one.snapshot()[4:] and many.snapshot()[0] == 500


def test_drains_run_before_each_publication() -> None:
    """A caller that buffers raw values publishes them in the same collection through its drain."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    hist = AggregatedHistogram("test.drain", "s", "test", BOUNDS)
    hist.bind(provider.get_meter("t"))
    series = hist.series({})
    buffered: list[float] = []

    def drain() -> None:
        batch = buffered[:]
        del buffered[:len(batch)]
        series.record_many(batch)

    hist.add_drain(drain)
    hist.add_drain(drain)  # twice is harmless
    buffered.extend([0.25, 0.5])
    (point,) = metric_points(reader, "test.drain")
    assert point.count == 2 and point.sum == 0.75

    def broken() -> None:
        raise RuntimeError("a drain that fails")

    hist.add_drain(broken)
    buffered.append(0.25)
    previous = _safety.set_raise_internal_errors(False)  # as in production: logged once, swallowed
    try:
        (point,) = metric_points(reader, "test.drain")  # a failing drain does not stop publication
    finally:
        _safety.set_raise_internal_errors(previous)
    assert point.count == 3
    provider.shutdown()


def _delta_reader() -> InMemoryMetricReader:
    return InMemoryMetricReader(preferred_temporality={Histogram: AggregationTemporality.DELTA})


def _point_values(point: Any) -> tuple[int, float, float, float, list[int]]:
    return (point.count, point.sum, point.min, point.max, list(point.bucket_counts))


def test_delta_points_hold_their_own_interval_only() -> None:
    """Under delta temporality each point is its interval's: count, sum, buckets, and min and max too
    (an interval holding only 0.25 and 0.375 reports min 0.25 and max 0.375, not the run's 0.0625 and 1.5)."""
    reader = _delta_reader()
    provider = MeterProvider(metric_readers=[reader])
    hist = AggregatedHistogram("test.delta.minmax", "s", "test", BOUNDS)
    hist.bind(provider.get_meter("t"))
    series = hist.series({})
    first, second, third = [0.0625, 1.5], [0.25, 0.375], [0.75]
    points = []
    for values in (first, second, third):
        for value in values:
            series.record(value)
        (point,) = metric_points(reader, "test.delta.minmax")
        points.append(_point_values(point))
    assert points == [_expected(first), _expected(second), _expected(third)]
    provider.shutdown()


def test_cumulative_points_keep_the_runs_min_and_max() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    hist = AggregatedHistogram("test.cumulative.minmax", "s", "test", BOUNDS)
    hist.bind(provider.get_meter("t"))
    series = hist.series({})
    recorded: list[float] = []
    for values in ([0.25, 0.375], [0.0625], [1.5, 0.5]):
        series.record_many(values)
        recorded.extend(values)
        (point,) = metric_points(reader, "test.cumulative.minmax")
        assert _point_values(point) == _expected(recorded)
    assert series.snapshot()[2:4] == [0.0625, 1.5]  # the run's, though each interval restarted the cells'
    provider.shutdown()


def test_delta_and_cumulative_readers_and_two_meters_each_get_correct_points() -> None:
    """An OTLP-delta-like and a Prometheus-like cumulative reader on one provider, and a second provider
    with its own delta reader, collect at interleaved times: every reader's points are exact."""
    delta, cumulative, other = _delta_reader(), InMemoryMetricReader(), _delta_reader()
    provider = MeterProvider(metric_readers=[delta, cumulative])
    second_provider = MeterProvider(metric_readers=[other])
    hist = AggregatedHistogram("test.readers", "s", "test", BOUNDS)
    hist.bind(provider.get_meter("t"))
    hist.bind(second_provider.get_meter("t"))
    series = hist.series({"k": "v"})
    rng = random.Random(3)
    batches = [_dyadic(rng, n) for n in (5, 1, 7, 3, 4, 2)]
    since = {"delta": [], "cumulative": [], "other": []}  # type: dict[str, list[float]]
    everything: list[float] = []
    readers = {"delta": delta, "cumulative": cumulative, "other": other}
    order = ["delta", "other", "cumulative", "delta", "delta", "other"]
    for name, values in zip(order, batches, strict=True):
        for value in values:
            series.record(value)
        everything.extend(values)
        for pending in since.values():
            pending.extend(values)
        (point,) = metric_points(readers[name], "test.readers")
        expected = everything if name == "cumulative" else since[name]
        assert _point_values(point) == _expected(expected), name
        since[name] = []
    provider.shutdown()
    second_provider.shutdown()


def test_gc_style_fixed_series_is_right_under_delta() -> None:
    reader = _delta_reader()
    provider = MeterProvider(metric_readers=[reader])
    hist = AggregatedHistogram("test.fixed.delta", "s", "test", BOUNDS)
    hist.bind(provider.get_meter("t"))
    fixed = hist.fixed_series({"gen": 2})
    fixed.record(0.875)
    (first,) = metric_points(reader, "test.fixed.delta")
    fixed.record(0.375)
    (second,) = metric_points(reader, "test.fixed.delta")
    assert _point_values(first) == _expected([0.875])
    assert _point_values(second) == _expected([0.375])  # was min 0.375, max 0.875 (the run's)
    assert fixed.snapshot()[2:4] == [0.375, 0.875]
    provider.shutdown()


def test_delta_intervals_stay_consistent_while_threads_record() -> None:
    """Threads record while a delta reader collects: the intervals add up to exactly what was recorded,
    and each interval's min and max lie inside its own lowest and highest non-empty buckets."""
    reader = _delta_reader()
    provider = MeterProvider(metric_readers=[reader])
    hist = AggregatedHistogram("test.delta.threads", "s", "test", BOUNDS)
    hist.bind(provider.get_meter("t"))
    points: list[Any] = []
    stop = threading.Event()
    recorded: list[float] = []
    lock = threading.Lock()

    def collector() -> None:
        while not stop.is_set():
            points.extend(metric_points(reader, "test.delta.threads"))

    def worker(seed: int) -> None:
        series = hist.series({})
        values = _dyadic(random.Random(seed), 5_000)
        for start in range(0, len(values), 50):
            series.record_many(values[start:start + 25])
            for value in values[start + 25:start + 50]:
                series.record(value)
            time.sleep(0.0001)  # let the collector in between batches too
        with lock:
            recorded.extend(values)

    background = threading.Thread(target=collector)
    background.start()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    background.join()
    points.extend(metric_points(reader, "test.delta.threads"))
    assert len(points) > 3  # collections ran while the threads recorded
    count, total, low, high, buckets = _expected(recorded)
    assert sum(p.count for p in points) == count
    assert sum(p.sum for p in points) == total
    assert [sum(col) for col in zip(*(p.bucket_counts for p in points), strict=True)] == buckets
    assert min(p.min for p in points) == low and max(p.max for p in points) == high
    edges = (-float("inf"), *BOUNDS, float("inf"))
    for p in points:
        counts = list(p.bucket_counts)
        first = next(i for i, n in enumerate(counts) if n)
        last = max(i for i, n in enumerate(counts) if n)
        assert edges[first] < p.min <= edges[first + 1]
        assert edges[last] < p.max <= edges[last + 1]
    provider.shutdown()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.parametrize("lock", ["hooks", "publish"])
def test_a_fork_while_a_publication_lock_is_held_does_not_deadlock_the_childs_collection(lock: str) -> None:
    """A fork taken while another thread held the hook lock (instruments being made) or a histogram's
    publication lock (a collection in progress): the child's first collection still runs."""
    from otel_perf import _aggregate
    from tests.helpers.forking import fork_while_held

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    hist = AggregatedHistogram("test.fork.lock", "s", "test", BOUNDS)
    hist.bind(provider.get_meter("t"))
    held = _aggregate._hooks_lock if lock == "hooks" else hist._publish_lock

    def child_collects() -> None:
        hist.series({}).record(0.25)
        (point,) = metric_points(reader, "test.fork.lock")
        assert point.count == 1  # the child's own measurement only
        AggregatedHistogram("test.fork.new", "s", "test", BOUNDS).bind(provider.get_meter("t2"))

    assert fork_while_held(held, child_collects) == "ok"
    provider.shutdown()


def test_binding_while_a_collection_runs_does_not_deadlock() -> None:
    """Instrumenting (a histogram bound to a new meter) while a collection of the same provider is under
    way: the SDK holds its collection lock while it runs callbacks and takes it to register an instrument,
    so binding must not hold a lock the publication callback takes."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    started, go_on = threading.Event(), threading.Event()

    def slow_callback(options: object) -> list[object]:  # runs first: registered before the hook
        started.set()
        go_on.wait(10)
        return []

    provider.get_meter("user").create_observable_gauge("user.gauge", callbacks=[slow_callback])
    first = AggregatedHistogram("test.bind.first", "s", "test", BOUNDS)
    first.bind(provider.get_meter("t"))
    first.series({}).record(0.25)
    collected: list[object] = []
    collector = threading.Thread(target=lambda: collected.extend(metric_points(reader, "test.bind.first")),
                                 daemon=True)
    collector.start()
    assert started.wait(10)
    second = AggregatedHistogram("test.bind.second", "s", "test", BOUNDS)
    binder = threading.Thread(target=second.bind, args=(provider.get_meter("t2"),), daemon=True)
    binder.start()
    time.sleep(0.3)  # the binder now waits for the SDK's collection lock
    go_on.set()
    collector.join(10)
    binder.join(10)
    assert not collector.is_alive() and not binder.is_alive(), "deadlocked"
    assert [p.count for p in collected] == [1]
    second.series({}).record(0.5)
    (point,) = metric_points(reader, "test.bind.second")
    assert point.count == 1
    provider.shutdown()


@pytest.mark.parametrize("delta", [False, True], ids=["cumulative", "delta"])
def test_binding_a_meter_again_publishes_each_measurement_once(delta: bool) -> None:
    """Instrument, uninstrument, instrument again on the same meter (a second configure(), say): the SDK
    kept what it received, so only what it has not received yet is published (it got the history again)."""
    reader = _delta_reader() if delta else InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    hist = AggregatedHistogram("test.rebind", "s", "test", BOUNDS)
    hist.bind(provider.get_meter("otel_perf"))
    series = hist.series({})
    series.record(0.25)
    assert [p.count for p in metric_points(reader, "test.rebind")] == [1]
    hist.unbind(provider.get_meter("otel_perf"))
    series.record(0.75)  # while unbound: nothing published...
    assert [p.count for p in metric_points(reader, "test.rebind")] == ([] if delta else [1])
    hist.bind(provider.get_meter("otel_perf"))
    series.record(0.375)
    (point,) = metric_points(reader, "test.rebind")  # ...until bound again: then exactly once
    assert _point_values(point) == _expected([0.75, 0.375] if delta else [0.25, 0.75, 0.375])
    provider.shutdown()


def test_a_series_does_not_keep_an_ended_thread_alive() -> None:
    """A thread that recorded and ended can be collected before the next publication: a program that counts
    its threads (CPython's own tests do) must not find it dangling because otel-perf recorded from it."""
    hist = AggregatedHistogram("test.threads.weak", "s", "test", BOUNDS)
    series = hist.series({"k": "v"})
    worker = threading.Thread(target=series.record, args=(0.2,))
    worker.start()
    worker.join()
    gone = weakref.ref(worker)
    del worker
    gc.collect()
    assert gone() is None
    assert series.snapshot()[0] == 1  # its measurement stays
