"""RuntimeInstrumentor's lifecycle: uninstrument restores, twice is harmless, pickling and fork stay right."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import pickle
import threading
import warnings
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from otel_perf.instrumentations.runtime import RuntimeInstrumentor
from otel_perf.testing import metric_points


def _ours_in_gc_callbacks() -> list[Any]:
    return [cb for cb in gc.callbacks if getattr(cb, "__name__", "") == "_gc_pause_callback"]


def test_uninstrument_restores_every_original(meter_provider: MeterProvider) -> None:
    """Thread.start, asyncio's _set_running_loop and gc.callbacks are exactly as before (identity; Thread.start
    is patched in place, so it is the same object throughout and gets its own code back)."""
    start = threading.Thread.__dict__["start"]
    start_code = start.__code__
    set_running_loop = asyncio.events._set_running_loop

    def user_callback(phase: str, info: dict[str, Any]) -> None:
        pass

    gc.callbacks.append(user_callback)
    callbacks = list(gc.callbacks)
    try:
        instrumentor = RuntimeInstrumentor()
        instrumentor.instrument(meter_provider=meter_provider)
        assert threading.Thread.__dict__["start"] is start and start.__code__ is not start_code
        assert len(_ours_in_gc_callbacks()) == 1
        instrumentor.uninstrument()
        assert threading.Thread.__dict__["start"] is start and start.__code__ is start_code
        assert asyncio.events._set_running_loop is set_running_loop
        assert gc.callbacks == callbacks and all(a is b for a, b in zip(gc.callbacks, callbacks, strict=True))
    finally:
        gc.callbacks.remove(user_callback)


def test_instrumenting_twice_is_harmless(meter_provider: MeterProvider,
                                         metric_reader: InMemoryMetricReader) -> None:
    """A second instrument() adds no second GC callback and no duplicate data points."""
    instrumentor = RuntimeInstrumentor()
    instrumentor.instrument(meter_provider=meter_provider)
    instrumentor.instrument(meter_provider=meter_provider)
    try:
        assert len(_ours_in_gc_callbacks()) == 1
        assert len(metric_points(metric_reader, "process.memory.usage")) == 1
    finally:
        instrumentor.uninstrument()
    assert _ours_in_gc_callbacks() == []


def test_reinstrumenting_on_the_same_provider_reports_again(
    meter_provider: MeterProvider, metric_reader: InMemoryMetricReader
) -> None:
    """instrument -> uninstrument -> instrument on one provider: values and GC pauses flow again."""
    instrumentor = RuntimeInstrumentor()
    instrumentor.instrument(meter_provider=meter_provider)
    instrumentor.uninstrument()
    metric_reader.get_metrics_data()
    instrumentor.instrument(meter_provider=meter_provider)
    try:
        data = metric_reader.get_metrics_data()
        before = {p.attributes["cpython.gc.generation"]: p.count
                  for p in metric_points(data, "otel_perf.gc.pause.duration")}
        gc.collect()
        data = metric_reader.get_metrics_data()
        after = {p.attributes["cpython.gc.generation"]: p.count
                 for p in metric_points(data, "otel_perf.gc.pause.duration")}
        assert after[2] - before.get(2, 0) >= 1
        assert metric_points(data, "process.memory.usage")[0].value > 0
    finally:
        instrumentor.uninstrument()


def test_uninstrumented_instruments_report_nothing(meter_provider: MeterProvider,
                                                   metric_reader: InMemoryMetricReader) -> None:
    """After uninstrument() the observable instruments stay registered in the SDK but observe nothing."""
    instrumentor = RuntimeInstrumentor()
    instrumentor.instrument(meter_provider=meter_provider)
    instrumentor.uninstrument()
    assert metric_points(metric_reader, "process.cpu.time") == []


def test_patched_functions_still_pickle_by_reference(meter_provider: MeterProvider) -> None:
    """Pickling Thread.start or _set_running_loop (by reference) still works while instrumented."""
    instrumentor = RuntimeInstrumentor()
    instrumentor.instrument(meter_provider=meter_provider)
    try:
        assert pickle.loads(pickle.dumps(threading.Thread.start)) is threading.Thread.start
        set_running_loop = asyncio.events._set_running_loop
        assert pickle.loads(pickle.dumps(set_running_loop)) is set_running_loop
        thread = threading.Thread(target=len, args=("x",))
        thread.start()
        thread.join()
    finally:
        instrumentor.uninstrument()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_reports_its_own_process(meter_provider: MeterProvider,
                                                metric_reader: InMemoryMetricReader) -> None:
    """After os.fork() the child's uptime, CPU time, GC counts and thread peak start from the fork."""
    instrumentor = RuntimeInstrumentor()
    instrumentor.instrument(meter_provider=meter_provider)
    try:
        for _ in range(3):
            gc.collect()
        threads = [threading.Thread(target=threading.Event().wait, args=(0.2,)) for _ in range(5)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        parent = _summary(metric_reader)
        read_end, write_end = os.pipe()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork of a multi-threaded process
            pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            try:
                # Threads the fork itself started: providers that earlier tests left running restart their
                # workers in an after-fork hook, so their number depends on what ran before this test.
                at_fork = threading.active_count()
                gc.collect()
                os.write(write_end, json.dumps({**_summary(metric_reader), "at_fork": at_fork}).encode())
            finally:
                os._exit(0)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            child = json.loads(pipe.read() or b"null")
        os.waitpid(pid, 0)
    finally:
        instrumentor.uninstrument()
    assert child is not None, "the child reported nothing"
    assert child["uptime"] < parent["uptime"]
    assert child["cpu"] < parent["cpu"]
    assert child["gc2"] == 1  # only the child's own gc.collect()
    assert parent["gc2"] >= 3
    assert child["pause2"] == 1  # the child's pause aggregate starts empty
    # The parent had six threads at once; the child starts from its one thread and those the fork started
    # (the SDK's after-fork hook may also start a short-lived resource-detection thread in it, which counts).
    assert child["thread_peak"] <= child["at_fork"] + 1
    assert child["thread_peak"] < parent["thread_peak"]


def _summary(reader: InMemoryMetricReader) -> dict[str, Any]:
    data = reader.get_metrics_data()

    def by_generation(name: str, field: str) -> int:
        for p in metric_points(data, name):
            if p.attributes["cpython.gc.generation"] == 2:
                return int(getattr(p, field))
        return 0

    return {
        "uptime": metric_points(data, "process.uptime")[0].value,
        "cpu": sum(p.value for p in metric_points(data, "process.cpu.time")),
        "gc2": by_generation("cpython.gc.collections", "value"),
        "pause2": by_generation("otel_perf.gc.pause.duration", "count"),
        "thread_peak": metric_points(data, "otel_perf.thread.peak")[0].value,
    }


def test_uptime_of_a_young_process_counts_from_its_start(tmp_path: Any) -> None:
    """A program's process.uptime starts when the program started, not up to a second earlier (psutil's
    creation time rests on /proc/stat's btime, truncated to whole seconds: on a machine booted at x.6 s
    a new process looked 0.6 s old)."""
    import subprocess
    import sys
    import time

    program = (
        "import json, time\n"
        "from opentelemetry.sdk.metrics import MeterProvider\n"
        "from opentelemetry.sdk.metrics.export import InMemoryMetricReader\n"
        "from otel_perf.instrumentations.runtime import RuntimeInstrumentor\n"
        "reader = InMemoryMetricReader()\n"
        "RuntimeInstrumentor().instrument(meter_provider=MeterProvider(metric_readers=[reader]))\n"
        "now = time.time()\n"
        "for m in reader.get_metrics_data().resource_metrics[0].scope_metrics[0].metrics:\n"
        "    if m.name == 'process.uptime':\n"
        "        point = m.data.data_points[0]\n"
        "        print(json.dumps({'start': point.time_unix_nano / 1e9 - point.value, 'now': now}))\n"
    )
    before = time.time()
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True).stdout
    after = time.time()
    start = json.loads(out)["start"]
    tick = 1 / os.sysconf("SC_CLK_TCK")
    assert before - 2 * tick <= start <= after, (before, start, after)
