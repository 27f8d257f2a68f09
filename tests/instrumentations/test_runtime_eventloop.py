"""Event-loop lag and task counts: loops made after instrumenting (asyncio.run, other threads) are probed."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from otel_perf._config import load_settings
from otel_perf.instrumentations import runtime as runtime_module
from otel_perf.instrumentations.runtime import RuntimeInstrumentor
from otel_perf.testing import metric_points

INTERVAL = 0.05


@pytest.fixture
def runtime(meter_provider: MeterProvider) -> Iterator[RuntimeInstrumentor]:
    instrumentor = RuntimeInstrumentor()
    instrumentor.instrument(meter_provider=meter_provider,
                            settings=load_settings({}, eventloop_lag_interval=INTERVAL))
    yield instrumentor
    instrumentor.uninstrument()


def _lag(reader: InMemoryMetricReader) -> tuple[int, float]:
    points = metric_points(reader, "otel_perf.eventloop.lag")
    if not points:
        return 0, 0.0
    (point,) = points
    return point.count, point.max


def test_a_loop_blocked_for_200ms_shows_a_lag_of_at_least_200ms(
    runtime: RuntimeInstrumentor, metric_reader: InMemoryMetricReader
) -> None:
    """asyncio.run makes a new loop after instrumenting; a coroutine blocking it shows up as lag."""
    count_before, _ = _lag(metric_reader)

    async def main() -> None:
        await asyncio.sleep(INTERVAL * 3)  # some on-time probes first
        # A probe is always pending, due within INTERVAL: blocking 200 ms + INTERVAL makes it >= 200 ms late.
        time.sleep(0.2 + INTERVAL)
        await asyncio.sleep(INTERVAL * 2)

    asyncio.run(main())
    count, worst = _lag(metric_reader)
    assert count - count_before >= 3
    assert worst >= 0.2


def test_an_idle_loop_shows_little_lag(meter_provider: MeterProvider) -> None:
    """Probes of a loop that only sleeps run about on time (generous bound: the machine is shared)."""
    from otel_perf.instrumentations._runtime_eventloop import eventloop_lag_histogram

    instrumentor = RuntimeInstrumentor()
    instrumentor.instrument(meter_provider=meter_provider,
                            settings=load_settings({}, eventloop_lag_interval=0.02))
    try:
        (series,) = eventloop_lag_histogram().all_series()
        before = series.snapshot()
        asyncio.run(asyncio.sleep(0.3))
        after = series.snapshot()
    finally:
        instrumentor.uninstrument()
    assert after[0] - before[0] >= 5
    assert after[1] - before[1] < 0.15 * (after[0] - before[0])  # mean lag well under 150 ms


def test_loops_in_other_threads_are_probed_and_their_tasks_counted(
    runtime: RuntimeInstrumentor, metric_reader: InMemoryMetricReader
) -> None:
    """A loop running in another thread gets a probe; its unfinished tasks are counted from any thread."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    release: asyncio.Event | None = None

    async def worker() -> None:
        assert release is not None
        await release.wait()

    async def main() -> None:
        nonlocal release
        release = asyncio.Event()
        tasks = [asyncio.ensure_future(worker()) for _ in range(5)]
        started.set()
        await asyncio.gather(*tasks)

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),))
    thread.start()
    try:
        assert started.wait(10)
        monitor = runtime._loops
        assert monitor is not None and loop in monitor.loops()
        # main() plus five workers are unfinished while the loop runs.
        assert metric_points(metric_reader, "otel_perf.asyncio.task.count")[0].value == 6
    finally:
        loop.call_soon_threadsafe(lambda: release.set() if release else None)
        thread.join(10)
        loop.close()
    assert loop not in monitor.loops()
    assert metric_points(metric_reader, "otel_perf.asyncio.task.count")[0].value == 0


def test_a_loop_already_running_when_instrumenting_is_probed(meter_provider: MeterProvider) -> None:
    """instrument() called inside a coroutine attaches the probe to the running loop at once."""
    instrumentor = RuntimeInstrumentor()

    async def main() -> list[asyncio.AbstractEventLoop]:
        instrumentor.instrument(meter_provider=meter_provider,
                                settings=load_settings({}, eventloop_lag_interval=INTERVAL))
        assert instrumentor._loops is not None
        return instrumentor._loops.loops()

    loop = asyncio.new_event_loop()
    try:
        attached = loop.run_until_complete(main())
        assert attached == [loop]
    finally:
        instrumentor.uninstrument()
        loop.close()


def test_the_probe_leaves_a_stopped_loop(runtime: RuntimeInstrumentor) -> None:
    """When a loop stops its probe is cancelled, so nothing of ours stays scheduled in it."""
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(asyncio.sleep(INTERVAL * 2))
        scheduled = [h for h in loop._scheduled if not h.cancelled()]  # type: ignore[attr-defined]
        assert scheduled == []
        assert runtime._loops is not None and loop not in runtime._loops.loops()
    finally:
        loop.close()


def test_uninstrument_restores_set_running_loop_and_stops_probing(meter_provider: MeterProvider) -> None:
    """After uninstrument() asyncio's own function is back (identity) and new loops get no probe."""
    original = asyncio.events._set_running_loop
    instrumentor = RuntimeInstrumentor()
    instrumentor.instrument(meter_provider=meter_provider,
                            settings=load_settings({}, eventloop_lag_interval=INTERVAL))
    assert asyncio.events._set_running_loop is not original
    monitor = instrumentor._loops
    instrumentor.uninstrument()
    assert asyncio.events._set_running_loop is original
    assert runtime_module._collector is None

    async def probes() -> int:
        loop = asyncio.get_running_loop()
        return len([h for h in loop._scheduled if not h.cancelled()])  # type: ignore[attr-defined]

    assert asyncio.run(probes()) == 0
    assert monitor is not None and monitor.loops() == []
