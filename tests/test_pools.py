"""BufferPool: reuse, bounds, exclusive lending across threads, readinto use, metrics, memory held."""

from __future__ import annotations

import gc
import hashlib
import os
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from otel_perf import BufferPool
from otel_perf.testing import metric_points


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    path = tmp_path / "data.bin"
    path.write_bytes(os.urandom(1024 * 1024 + 123))  # not a multiple of the buffer size
    return path


def test_a_returned_buffer_is_lent_again(meter_provider: Any) -> None:
    """The second lease gets the first one's buffer back: a hit, no allocation."""
    pool = BufferPool(size=1024, meter_provider=meter_provider)
    with pool.buffer() as first:
        assert isinstance(first, bytearray) and len(first) == 1024
    with pool.buffer() as second:
        assert second is first
    assert pool.stats == {"hits": 1, "misses": 1, "in_use": 0, "pooled": 1}


def test_buffers_lent_at_once_are_distinct_and_the_pool_stays_bounded(meter_provider: Any) -> None:
    """Concurrent leases never share a buffer; at most max_pooled are kept afterwards."""
    pool = BufferPool(size=64, max_pooled=2, meter_provider=meter_provider)
    leases = [pool.buffer() for _ in range(5)]
    buffers = [lease.__enter__() for lease in leases]
    assert len({id(b) for b in buffers}) == 5
    assert pool.stats["in_use"] == 5
    for lease in leases:
        lease.__exit__(None, None, None)
    assert pool.stats == {"hits": 0, "misses": 5, "in_use": 0, "pooled": 2}


def test_threads_get_exclusive_buffers(meter_provider: Any) -> None:
    """8 threads x 500 leases: no buffer is lent to two threads at once, and every lease is counted."""
    pool = BufferPool(size=256, max_pooled=4, meter_provider=meter_provider)
    errors: list[str] = []

    def work(tag: int) -> None:
        mark = bytes([tag]) * 256
        for _ in range(500):
            with pool.buffer() as buf:
                buf[:] = mark
                time.sleep(0)  # let other threads run mid-lease
                if buf != mark:
                    errors.append(f"thread {tag} saw another thread's bytes")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    stats = pool.stats
    assert stats["hits"] + stats["misses"] == 8 * 500
    assert stats["in_use"] == 0 and stats["pooled"] <= 4


def test_buffer_returns_to_the_pool_when_the_block_raises(meter_provider: Any) -> None:
    """A user exception passes through untouched and the buffer is still returned."""
    pool = BufferPool(size=16, meter_provider=meter_provider)
    with pytest.raises(KeyError), pool.buffer():
        raise KeyError("user")
    assert pool.stats["in_use"] == 0 and pool.stats["pooled"] == 1


def test_a_resized_buffer_is_not_pooled_again(meter_provider: Any) -> None:
    """A caller that grew its buffer does not poison the pool with a wrong-sized one."""
    pool = BufferPool(size=16, meter_provider=meter_provider)
    with pool.buffer() as buf:
        buf.extend(b"more")
    assert pool.stats["pooled"] == 0
    with pool.buffer() as buf:
        assert len(buf) == 16


def test_readinto_and_iter_file_read_the_whole_file(data_file: Path, meter_provider: Any) -> None:
    """The pooled buffer works with readinto; iter_file yields the file's exact bytes."""
    pool = BufferPool(meter_provider=meter_provider)
    with pool.buffer() as buf, open(data_file, "rb", buffering=0) as f:
        n = f.readinto(buf)
        assert bytes(buf[:n]) == data_file.read_bytes()[:n]
    digest = hashlib.sha256()
    for chunk in pool.iter_file(data_file):
        assert isinstance(chunk, memoryview)
        digest.update(chunk)
    assert digest.hexdigest() == hashlib.sha256(data_file.read_bytes()).hexdigest()
    assert pool.stats["in_use"] == 0


def test_iter_file_closed_early_returns_its_buffer(data_file: Path, meter_provider: Any) -> None:
    """Breaking out of iter_file releases the buffer (no leak, can be lent again)."""
    pool = BufferPool(meter_provider=meter_provider)
    chunks = pool.iter_file(data_file)
    next(chunks)
    assert pool.stats["in_use"] == 1
    chunks.close()
    assert pool.stats["in_use"] == 0 and pool.stats["pooled"] == 1


def test_streaming_a_large_file_holds_one_buffer_not_the_file(data_file: Path, meter_provider: Any) -> None:
    """The reason to use the pool: reading 1 MiB through it allocates about nothing; read() holds it all."""
    pool = BufferPool(meter_provider=meter_provider)
    for _ in pool.iter_file(data_file):  # warm: the buffer exists
        pass
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        for chunk in pool.iter_file(data_file):
            hashlib.sha256(chunk)
        pooled_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        with open(data_file, "rb") as f:
            hashlib.sha256(f.read())
        read_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert read_peak >= 1024 * 1024
    assert pooled_peak < 64 * 1024


def test_metrics_sum_every_pool_and_keep_counts_of_collected_pools(meter_provider: Any,
                                                                     metric_reader: Any) -> None:
    """hits/misses/in_use ({buffer}) add up over pools; a garbage-collected pool's counts stay."""
    a = BufferPool(size=8, meter_provider=meter_provider)
    b = BufferPool(size=8, meter_provider=meter_provider)
    for pool in (a, b, a):
        with pool.buffer():
            pass
    lease = b.buffer()
    lease.__enter__()
    data = metric_reader.get_metrics_data()
    found = {m.name: m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
    names = ("otel_perf.buffer_pool.hits", "otel_perf.buffer_pool.misses", "otel_perf.buffer_pool.in_use")
    for name in names:
        assert found[name].unit == "{buffer}"
    value = {name: metric_points(data, name)[0].value for name in found if "buffer_pool" in name}
    assert value == {"otel_perf.buffer_pool.hits": 2, "otel_perf.buffer_pool.misses": 2,
                     "otel_perf.buffer_pool.in_use": 1}
    assert found["otel_perf.buffer_pool.hits"].data.is_monotonic
    assert not found["otel_perf.buffer_pool.in_use"].data.is_monotonic
    lease.__exit__(None, None, None)
    del a, b, lease, pool
    gc.collect()
    data = metric_reader.get_metrics_data()
    assert metric_points(data, "otel_perf.buffer_pool.hits")[0].value == 2
    assert metric_points(data, "otel_perf.buffer_pool.misses")[0].value == 2
    assert metric_points(data, "otel_perf.buffer_pool.in_use")[0].value == 0


def test_pool_created_before_the_sdk_reports_once_it_is_set(otel_globals: None) -> None:
    """A module-level pool made before configure() still reports through the provider set later."""
    from opentelemetry import metrics
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    first, second = BufferPool(size=8), BufferPool(size=8)
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    metrics.set_meter_provider(provider)
    try:
        for pool in (first, second):
            with pool.buffer():
                pass
        assert metric_points(reader, "otel_perf.buffer_pool.misses")[0].value == 2
    finally:
        provider.shutdown()


@pytest.mark.parametrize("kwargs", [{"size": 0}, {"max_pooled": -1}])
def test_invalid_sizes_raise(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="BufferPool"):
        BufferPool(**kwargs)
