"""Cost of encoding a profile for OTLP (budget in ``benchmarks/budgets.toml``: a 60 s profile of 6 000 samples
in under 50 ms).

The snapshot is what 60 s of a busy thread at 100 Hz gives in the worst case for the encoder: 6 000
samples that all differ (600 spans of 100 ms, 10 distinct stacks each, 30 frames deep over 200 functions
and 500 locations), so every sample is a sample of its own, with its own link. ``test_encode_otlp``
builds the ``ExportProfilesServiceRequest`` and serializes it (what an export sends); its bare twin
``test_encode_pprof_baseline`` writes the same snapshot as gzipped pprof (what the debug server sends).
The budget is checked on ``encode_ms_vs_50ms`` (median milliseconds over 50). Run:
``.venv/bin/python -m pytest benchmarks/profiling/test_otlp_encode.py --benchmark-enable --benchmark-only``.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from otel_perf.profiling import otlp
from otel_perf.profiling.snapshot import Snapshot, encode_pprof

SAMPLES = 6_000


def _snapshot() -> Snapshot:
    rng = random.Random(21)
    functions = [(f"module{i % 20}.function_{i}", f"/app/module{i % 20}.py", 10 * i) for i in range(200)]
    locations = [(functions[i % 200], functions[i % 200][2] + 1 + i // 200) for i in range(500)]
    counts: dict[Any, list[int]] = {}
    for _span in range(600):
        labels = ("MainThread", "", (f"{rng.getrandbits(128):032x}", f"{rng.getrandbits(64):016x}", "request"))
        base = tuple(rng.randrange(1, 501) for _ in range(25))
        for _ in range(10):
            stack = base + tuple(rng.randrange(1, 501) for _ in range(5))
            counts[(labels, stack)] = [1, rng.randrange(5_000_000, 15_000_000)]
    assert sum(count for count, _ in counts.values()) == SAMPLES
    return Snapshot(mode="cpu", period_ns=10_000_000, start_unix_ns=1_700_000_000_000_000_000,
                    duration_ns=60_000_000_000, locations=locations, counts=counts, comments=[])


SNAPSHOT = _snapshot()
RESOURCE = {"service.name": "benchmark", "service.instance.id": "x" * 36, "process.pid": 4242,
            "telemetry.sdk.language": "python", "telemetry.sdk.name": "opentelemetry"}


def _otlp() -> bytes:
    data: bytes = otlp.encode(SNAPSHOT, RESOURCE).SerializeToString()
    return data


@pytest.mark.benchmark(group="profiling.otlp.encode")
def test_encode_pprof_baseline(benchmark: Any) -> None:
    """The same snapshot as gzipped pprof (the debug server's format)."""
    assert benchmark(encode_pprof, SNAPSHOT)


@pytest.mark.benchmark(group="profiling.otlp.encode")
def test_encode_otlp(benchmark: Any) -> None:
    """The OTLP profiles request of a 60 s, 6 000-sample profile, built and serialized."""
    assert benchmark(_otlp)
    if not benchmark.disabled:
        benchmark.extra_info["encode_ms_vs_50ms"] = round(benchmark.stats.stats.median * 1000 / 50, 4)
