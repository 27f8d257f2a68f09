"""BufferPool against plain ``read()`` for files of 1 KB, 100 KB and 1 MB (the plan's buffer-pool claim).

Each group reads one file and checksums its bytes (zlib.crc32, a consumer that needs every byte):
``baseline`` is ``open(path, "rb").read()``; ``instrumented`` streams it through the default pool (32 KiB
buffers, ``iter_file``); ``pool-sized`` uses a pool whose buffers hold the whole file (one ``readinto``).
Report the ratio instrumented / baseline per group; docs/memory.md records the numbers.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Any

import pytest

from otel_perf import BufferPool

SIZES = {"1KB": 1000, "100KB": 100_000, "1MB": 1_000_000}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("pool-bench")
    out = {}
    for label, size in SIZES.items():
        path = directory / f"{label}.bin"
        path.write_bytes(os.urandom(size))
        out[label] = path
    return out


def plain_read(path: Path) -> int:
    with open(path, "rb") as f:
        return zlib.crc32(f.read())


def pooled_read(pool: BufferPool, path: Path) -> int:
    crc = 0
    for chunk in pool.iter_file(path):
        crc = zlib.crc32(chunk, crc)
    return crc


@pytest.mark.parametrize("label", list(SIZES))
def test_baseline_plain_read(benchmark: Any, files: dict[str, Path], label: str) -> None:
    benchmark.group = f"buffer-pool-{label}"
    assert benchmark(plain_read, files[label]) == plain_read(files[label])


@pytest.mark.parametrize("label", list(SIZES))
def test_instrumented_pool_32k(benchmark: Any, files: dict[str, Path], label: str,
                               meter_provider: Any) -> None:
    benchmark.group = f"buffer-pool-{label}"
    pool = BufferPool(meter_provider=meter_provider)
    assert benchmark(pooled_read, pool, files[label]) == plain_read(files[label])
    assert pool.stats["misses"] == 1  # every later read reused the one buffer


@pytest.mark.parametrize("label", list(SIZES))
def test_instrumented_pool_sized_to_file(benchmark: Any, files: dict[str, Path], label: str,
                                         meter_provider: Any) -> None:
    benchmark.group = f"buffer-pool-{label}"
    pool = BufferPool(size=SIZES[label] + 1, meter_provider=meter_provider)
    assert benchmark(pooled_read, pool, files[label]) == plain_read(files[label])
