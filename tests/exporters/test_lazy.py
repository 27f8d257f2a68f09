"""Lazy OTLP exporters: the real exporter is made on the first export, with what the real one would prefer."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import MetricExportResult, PeriodicExportingMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_perf import _safety
from otel_perf.exporters.lazy import (
    STANDARD_OTLP_NAMES,
    LazyOTLPMetricExporter,
    LazyOTLPSpanExporter,
    load_otlp_class,
    otlp_metric_preferences,
)


@pytest.mark.parametrize("temporality", ["CUMULATIVE", "delta", "LOWMEMORY", "bogus", None])
@pytest.mark.parametrize("histogram", ["explicit_bucket_histogram", "base2_exponential_bucket_histogram", None])
def test_metric_preferences_are_those_of_the_real_otlp_exporter(
        monkeypatch: pytest.MonkeyPatch, temporality: str | None, histogram: str | None) -> None:
    """The periodic reader reads temporality and aggregation when it is made, before the real exporter
    exists: the lazy one prefers exactly what the standard OTLP metric exporter prefers, from its variables."""
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

    for variable, value in (("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", temporality),
                            ("OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION", histogram)):
        if value is None:
            monkeypatch.delenv(variable, raising=False)
        else:
            monkeypatch.setenv(variable, value)
    real = OTLPMetricExporter()
    lazy = LazyOTLPMetricExporter()
    assert lazy._preferred_temporality == real._preferred_temporality
    assert lazy._preferred_aggregation is not None and real._preferred_aggregation is not None
    assert ({k: type(v) for k, v in lazy._preferred_aggregation.items()}
            == {k: type(v) for k, v in real._preferred_aggregation.items()})
    assert otlp_metric_preferences()[0] == real._preferred_temporality


def test_the_real_exporter_is_made_on_the_first_export_in_the_export_thread() -> None:
    """Spans ended before the first export are exported by the real exporter, made in the processor's
    worker thread; force_flush and shutdown reach it."""
    made_in: list[str] = []
    real = InMemorySpanExporter()

    def build() -> InMemorySpanExporter:
        made_in.append(threading.current_thread().name)
        return real

    lazy = LazyOTLPSpanExporter(build)
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(lazy, schedule_delay_millis=300))
    for name in ("a", "b"):
        provider.get_tracer("t").start_span(name).end()
    assert made_in == [] and lazy.exporter is None  # nothing made while the program records
    deadline = time.monotonic() + 30
    while len(real.get_finished_spans()) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert made_in and made_in[0] != threading.main_thread().name
    assert sorted(s.name for s in real.get_finished_spans()) == ["a", "b"]
    provider.get_tracer("t").start_span("c").end()
    assert provider.force_flush()  # forwarded to the real exporter
    assert sorted(s.name for s in real.get_finished_spans()) == ["a", "b", "c"]
    provider.shutdown()
    assert real._stopped  # shutdown forwarded
    assert lazy.export([]) is SpanExportResult.FAILURE and len(made_in) == 1  # made once, now stopped


def test_shutdown_before_any_export_makes_nothing() -> None:
    """A program that exported nothing does not load the exporter (gRPC) just to shut it down."""
    made: list[int] = []
    lazy = LazyOTLPSpanExporter(lambda: made.append(1) or InMemorySpanExporter())  # type: ignore[func-returns-value]
    assert lazy.force_flush() is True
    lazy.shutdown()
    assert lazy.export([]) is SpanExportResult.FAILURE
    assert made == []


def test_an_exporter_that_cannot_be_made_fails_its_exports(caplog: pytest.LogCaptureFixture) -> None:
    """An exporter that cannot be made (its package missing) costs failed exports and one log line, never
    an exception into the SDK's worker."""
    previous = _safety.set_raise_internal_errors(False)  # as in a user's program
    try:
        _fail_twice(caplog)
    finally:
        _safety.set_raise_internal_errors(previous)


def _fail_twice(caplog: pytest.LogCaptureFixture) -> None:
    def build(**kwargs: Any) -> Any:
        raise ImportError("No module named 'grpc'")

    lazy = LazyOTLPMetricExporter(build)
    reader_exporter: Any = lazy
    with caplog.at_level("WARNING", logger="otel_perf"):
        assert reader_exporter.export(None) is MetricExportResult.FAILURE
        assert reader_exporter.export(None) is MetricExportResult.FAILURE
    assert sum("could not be made" in r.getMessage() for r in caplog.records) == 1
    PeriodicExportingMetricReader(lazy, export_interval_millis=60_000).shutdown()


@pytest.mark.parametrize("signal", ["traces", "metrics", "logs"])
@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_the_standard_names_load_the_standard_otlp_exporters(
        monkeypatch: pytest.MonkeyPatch, signal: str, protocol: str) -> None:
    """Each name made lazy loads, on the first export, the class the SDK's configurator loads for it."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    transport = "grpc" if protocol == "grpc" else "http"
    assert load_otlp_class(signal, "otlp").__module__.startswith(f"opentelemetry.exporter.otlp.proto.{transport}.")
    for name in STANDARD_OTLP_NAMES - {"otlp"}:
        assert load_otlp_class(signal, name).__module__.startswith(f"opentelemetry.exporter.{name.replace('_', '.')}.")


def test_importing_the_lazy_exporters_loads_no_exporter_stack() -> None:
    """The lazy exporters themselves load neither protobuf nor gRPC nor requests."""
    code = ("import sys, otel_perf.exporters.lazy as lazy; lazy.LazyOTLPMetricExporter(); "
            "print(sorted(m for m in sys.modules if m.startswith(('grpc', 'google.protobuf', 'requests'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_lazy_name_spools_like_otlp(tmp_path: Any) -> None:
    """OTEL_PERF_SPOOL_DIR makes the lazy OTLP name durable, as it does ``otlp`` (a child of `otel-perf run`
    inherits ``otel_perf_otlp``)."""
    from otel_perf._config import load_settings
    from otel_perf.exporters.otlp import spooled_exporter_names

    assert spooled_exporter_names(["otel_perf_otlp"], load_settings(spool_dir=str(tmp_path))) == ["otlp_durable"]
    assert spooled_exporter_names(["otel_perf_otlp"], load_settings()) == ["otel_perf_otlp"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork only")
def test_a_child_forked_while_the_exporter_is_being_made_makes_its_own() -> None:
    """A fork while the export thread is making the real exporter (importing gRPC) does not leave the
    child waiting forever for that thread's lock: the child makes its own exporter and exports."""
    parent = os.getpid()
    building, release = threading.Event(), threading.Event()

    def build() -> InMemorySpanExporter:
        if os.getpid() == parent:
            building.set()
            release.wait(30)
        return InMemorySpanExporter()

    lazy = LazyOTLPSpanExporter(build)
    exporting = threading.Thread(target=lazy.export, args=([],))
    exporting.start()
    assert building.wait(30)
    pid = os.fork()
    if pid == 0:  # the child: exit 0 when its export went through
        os._exit(0 if lazy.export([]) is SpanExportResult.SUCCESS else 1)
    try:
        deadline = time.monotonic() + 30
        while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert done[0] == pid, "the forked child hung on the lock"
        assert os.waitstatus_to_exitcode(done[1]) == 0
    finally:
        if done[0] == 0:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        release.set()
        exporting.join(30)
