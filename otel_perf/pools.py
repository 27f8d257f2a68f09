"""BufferPool: reusable fixed-size byte buffers for ``readinto``, bounded, thread-safe, measured.

Why this module exists: the performance plan asks for buffer pools for file reading (a Go
``sync.Pool`` of 32 KiB buffers). Python is not Go, so this module measures before it promises
(``benchmarks/test_pools.py``, numbers in ``docs/memory.md``):

* **Speed: no gain worth having over plain ``read()``.** CPython's ``f.read()`` on a regular file sizes
  one allocation from ``fstat`` and fills it with one system call; that path is already lean. Measured
  here (reading and checksumming one file, best of thousands of rounds): 1 KB files 0.95x the time of
  ``read()`` (``open()`` dominates both); 100 KB 1.07x and 1 MB 1.10x with the default 32 KiB buffers
  (one ``readinto`` per 32 KiB instead of one ``read``); 0.99x and 1.01x with buffers as large as the file.
* **Memory: a real gain for large files.** Streaming a file through a pooled buffer holds ``size``
  bytes at a time however large the file is, and allocates nothing once the pool is warm; ``read()``
  holds the whole file (1 MiB: under 64 KiB traced peak against over 1 MiB, tested). Use the pool where
  files are large or many are read concurrently and the bytes are consumed as they come (hashing,
  scanning, copying, incremental parsing), not to read small files into memory.

Usage::

    from otel_perf import BufferPool

    pool = BufferPool()                      # 32 KiB buffers, at most 16 kept
    with pool.buffer() as buf, open(path, "rb", buffering=0) as f:
        n = f.readinto(buf)

    digest = hashlib.sha256()
    for chunk in pool.iter_file(path):       # memoryviews into one pooled buffer
        digest.update(chunk)

Emits ``otel_perf.buffer_pool.hits`` and ``otel_perf.buffer_pool.misses`` (Counters, {buffer}) and
``otel_perf.buffer_pool.in_use`` ({buffer}), summed over every pool of a meter provider. They are observable:
the hot path only bumps integers under the pool's lock, and the SDK reads them at collection.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Any

from opentelemetry.metrics import (
    CallbackOptions,
    Meter,
    MeterProvider,
    Observation,
    get_meter,
    get_meter_provider,
)

from otel_perf._semconv import (
    BUFFER_POOL_HITS,
    BUFFER_POOL_IN_USE,
    BUFFER_POOL_MISSES,
    INSTRUMENTATION_SCOPE,
    SCHEMA_URL,
    metric,
)
from otel_perf.version import __version__

__all__ = ["BufferPool"]

_HITS, _MISSES, _IN_USE = 0, 1, 2


class _Lease:
    """The context manager of :meth:`BufferPool.buffer` (a class: cheaper than ``@contextmanager``)."""

    __slots__ = ("_buf", "_pool")

    def __init__(self, pool: BufferPool) -> None:
        self._pool = pool
        self._buf: bytearray | None = None

    def __enter__(self) -> bytearray:
        self._buf = self._pool._acquire()
        return self._buf

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        buf, self._buf = self._buf, None
        if buf is not None:
            self._pool._release(buf)


class BufferPool:
    """A bounded, thread-safe pool of ``bytearray`` buffers of one size.

    Args:
        size: bytes per buffer (default 32 KiB, as in the plan).
        max_pooled: most free buffers kept for reuse; buffers returned beyond that are dropped, so the
            pool holds at most ``size * max_pooled`` bytes while idle.
        meter_provider: where the pool's metrics go (default: the global provider).

    Raises:
        ValueError: ``size`` < 1 or ``max_pooled`` < 0.
    """

    def __init__(self, size: int = 32 * 1024, max_pooled: int = 16, *,
                 meter_provider: MeterProvider | None = None) -> None:
        if size < 1:
            raise ValueError(f"BufferPool size must be >= 1, got {size!r}")
        if max_pooled < 0:
            raise ValueError(f"BufferPool max_pooled must be >= 0, got {max_pooled!r}")
        self.size = size
        self.max_pooled = max_pooled
        self._free: list[bytearray] = []
        self._lock = threading.Lock()
        self._stats = [0, 0, 0]  # hits, misses, in use; mutated under _lock
        _metrics_for(meter_provider).add(self)

    def buffer(self) -> _Lease:
        """A context manager lending one buffer of ``size`` bytes; it returns to the pool on exit.

        The buffer's content is whatever the previous user left (it is not zeroed); use the count that
        ``readinto`` returns. Do not keep the buffer, or a memoryview of it, after the block.
        """
        return _Lease(self)

    def _acquire(self) -> bytearray:
        with self._lock:
            stats = self._stats
            stats[_IN_USE] += 1
            if self._free:
                stats[_HITS] += 1
                return self._free.pop()
            stats[_MISSES] += 1
        return bytearray(self.size)

    def _release(self, buf: bytearray) -> None:
        with self._lock:
            self._stats[_IN_USE] -= 1
            # A buffer the caller resized is not the pool's size any more: let it go.
            if len(buf) == self.size and len(self._free) < self.max_pooled:
                self._free.append(buf)

    def iter_file(self, path: str | os.PathLike[str]) -> Iterator[memoryview]:
        """Yield the bytes of the file at ``path`` as memoryviews into one pooled buffer.

        Each chunk is valid only until the next one is requested (the same buffer is refilled); copy it
        (``bytes(chunk)``) to keep it. The buffer returns to the pool when the iteration ends or the
        iterator is closed.
        """
        with self.buffer() as buf, open(path, "rb", buffering=0) as f:
            view = memoryview(buf)
            try:
                while True:
                    n = f.readinto(view)
                    if not n:
                        return
                    yield view[:n]
            finally:
                view.release()

    @property
    def stats(self) -> dict[str, int]:
        """Counts so far: ``hits``, ``misses``, ``in_use`` and ``pooled`` (free buffers kept)."""
        with self._lock:
            hits, misses, in_use = self._stats
            return {"hits": hits, "misses": misses, "in_use": in_use, "pooled": len(self._free)}


class _PoolMetrics:
    """The buffer-pool instruments of one meter: sums over its live pools plus those already gone."""

    def __init__(self, meter: Meter) -> None:
        self._pools: weakref.WeakSet[BufferPool] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._retired = [0, 0]  # hits and misses of pools that were garbage-collected
        hits, misses = metric(BUFFER_POOL_HITS), metric(BUFFER_POOL_MISSES)
        in_use = metric(BUFFER_POOL_IN_USE)
        meter.create_observable_counter(hits.name, callbacks=[self._observer(_HITS)], unit=hits.unit,
                                        description=hits.description)
        meter.create_observable_counter(misses.name, callbacks=[self._observer(_MISSES)], unit=misses.unit,
                                        description=misses.description)
        meter.create_observable_up_down_counter(in_use.name, callbacks=[self._observer(_IN_USE)],
                                                unit=in_use.unit, description=in_use.description)

    def add(self, pool: BufferPool) -> None:
        with self._lock:
            self._pools.add(pool)
        # The counts of a pool that is collected stay in the (monotonic) totals. Not at exit: finalize
        # would run while the pool is still alive and counted, and the last export would double it.
        weakref.finalize(pool, self._retire, pool._stats).atexit = False

    def _retire(self, stats: list[int]) -> None:
        with self._lock:
            self._retired[_HITS] += stats[_HITS]
            self._retired[_MISSES] += stats[_MISSES]

    def total(self, index: int) -> int:
        with self._lock:
            pools = list(self._pools)
            value = self._retired[index] if index != _IN_USE else 0
        for pool in pools:
            with pool._lock:
                value += pool._stats[index]
        return value

    def _observer(self, index: int) -> Any:
        ref = weakref.ref(self)

        def callback(options: CallbackOptions) -> Iterable[Observation]:
            metrics = ref()
            if metrics is None:
                return ()
            return [Observation(metrics.total(index))]

        return callback


# Keyed by provider, not meter: before the SDK is set up, each get_meter() call returns a new proxy
# meter, and instruments registered twice under one name keep only the first one's callbacks.
_registry: weakref.WeakKeyDictionary[MeterProvider, _PoolMetrics] = weakref.WeakKeyDictionary()
_registry_lock = threading.Lock()


def _metrics_for(meter_provider: MeterProvider | None) -> _PoolMetrics:
    provider = meter_provider if meter_provider is not None else get_meter_provider()
    with _registry_lock:
        found = _registry.get(provider)
        if found is None:
            meter = get_meter(INSTRUMENTATION_SCOPE, __version__, provider, schema_url=SCHEMA_URL)
            found = _registry[provider] = _PoolMetrics(meter)
        return found
