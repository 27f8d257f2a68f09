"""The library way in: configure() and shutdown()."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from opentelemetry import context, metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import otel_perf
from otel_perf import _otlpjson, _process, _sdk
from otel_perf.exporters.files import iter_requests
from otel_perf.testing import OTLPReceiver, metric_points

pytestmark = pytest.mark.usefixtures("otel_globals")


@pytest.fixture
def no_otel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith(("OTEL_", "TRACEPARENT", "TRACESTATE")):
            monkeypatch.delenv(key)


def _record_some() -> None:
    with trace.get_tracer("app").start_as_current_span("request"):
        metrics.get_meter("app").create_counter("app.requests").add(2)


def test_configure_then_shutdown_writes_everything_to_files(no_otel_env: None, tmp_path: Path) -> None:
    """With no endpoint, configure() writes OTLP JSON lines, and shutdown() flushes all of it."""
    handle = otel_perf.configure("lib-app", output_dir=str(tmp_path))
    _record_some()
    handle.shutdown()
    spans = [s for _, r in iter_requests(tmp_path) for s in _otlpjson.spans(r)]
    points = [p for _, r in iter_requests(tmp_path) for p in _otlpjson.metric_points(r)]
    assert [s.name for s in spans] == ["request"]
    assert spans[0].resource["service.name"] == "lib-app"
    assert [p.value for p in points if p.name == "app.requests"][-1] == 2
    # one file per process and signal
    assert sorted(f.name.split("-")[0] for f in tmp_path.iterdir()) == ["metrics", "traces"]


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_configure_then_shutdown_delivers_to_otlp(
    no_otel_env: None, monkeypatch: pytest.MonkeyPatch, otlp_receiver: OTLPReceiver, protocol: str
) -> None:
    """Everything recorded before shutdown() reaches the OTLP backend, with no waiting by the test."""
    for key, value in otlp_receiver.env(protocol).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "60000")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "60000")
    handle = otel_perf.configure("lib-app")
    _record_some()
    handle.shutdown()
    # The app's spans only: the in-process receiver's gRPC server runs the final metric export on a
    # thread pool of this process, which is instrumented until shutdown() removes the instrumentations.
    assert [s.name for s in otlp_receiver.spans() if s.scope == "app"] == ["request"]
    assert [p.value for p in otlp_receiver.latest_points("app.requests")] == [2]


@pytest.mark.parametrize("owned", [True, False], ids=["configure-made-providers", "user-meter-provider"])
def test_shutdown_publishes_every_instrumentation_before_removing_it(
    no_otel_env: None, monkeypatch: pytest.MonkeyPatch, otlp_receiver: OTLPReceiver, owned: bool
) -> None:
    """handle.shutdown() exports the aggregated histograms and the observable gauges of every
    instrumentation (it used to uninstrument first, which left only two metrics to export)."""
    import concurrent.futures
    import json

    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    for key, value in otlp_receiver.env("grpc").items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "60000")
    user_provider = None
    if not owned:  # the user's own pipeline: flushed by shutdown(), never shut down
        user_provider = MeterProvider(metric_readers=[PeriodicExportingMetricReader(
            OTLPMetricExporter(), export_interval_millis=60_000)])
        metrics.set_meter_provider(user_provider)
    handle = otel_perf.configure("lib-app")

    @otel_perf.tool
    def lookup(value: int) -> int:
        return value * 2

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        assert list(pool.map(lookup, range(4))) == [0, 2, 4, 6]
    json.loads("[1, 2]")
    handle.shutdown()
    names = {p.name for p in otlp_receiver.metric_points()}
    for family in ("gen_ai.execute_tool.duration", "otel_perf.pool.job.duration", "otel_perf.parse.duration",
                   "otel_perf.gc.pause.duration", "process.cpu.time", "otel_perf.memory.peak",
                   "otel_perf.memory.usage", "otel_perf.pool.worker.limit"):
        assert family in names, family
    (tool,) = otlp_receiver.latest_points("gen_ai.execute_tool.duration")
    assert tool.count == 4
    if user_provider is not None:
        user_provider.shutdown()


def test_configure_adds_to_user_providers(no_otel_env: None, monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path) -> None:
    """Providers the user already set stay in charge; configure() adds the exporters the env names."""
    exporter = InMemorySpanExporter()
    user_tracer = TracerProvider()
    user_tracer.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(user_tracer)
    reader = InMemoryMetricReader()
    user_meter = MeterProvider(metric_readers=[reader])
    metrics.set_meter_provider(user_meter)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otel_perf_file")
    handle = otel_perf.configure(output_dir=str(tmp_path))
    assert handle.tracer_provider is user_tracer and handle.meter_provider is user_meter
    assert user_tracer not in handle.owned and user_meter not in handle.owned
    _record_some()
    handle.shutdown()
    assert [s.name for s in exporter.get_finished_spans()] == ["request"]
    assert [p.value for p in metric_points(reader, "app.requests")] == [2]  # the user's reader still works
    files = [s.name for _, r in iter_requests(tmp_path) for s in _otlpjson.spans(r)]
    assert files == ["request"]
    user_tracer.shutdown()
    user_meter.shutdown()


def test_second_configure_is_harmless(no_otel_env: None, tmp_path: Path) -> None:
    first = otel_perf.configure(output_dir=str(tmp_path))
    processors = len(first.tracer_provider._active_span_processor._span_processors)
    second = otel_perf.configure(output_dir=str(tmp_path))
    assert second is first
    assert len(first.tracer_provider._active_span_processor._span_processors) == processors
    _record_some()
    first.shutdown()
    spans = [s for _, r in iter_requests(tmp_path) for s in _otlpjson.spans(r)]
    assert len(spans) == 1


def test_invalid_argument_raises_before_anything_is_set_up(no_otel_env: None) -> None:
    with pytest.raises(otel_perf.ConfigError, match="OTEL_PERF_MEMORY_THRESHOLD"):
        otel_perf.configure(memory_threshold="abc")
    assert _process.current_handle() is None
    assert not isinstance(trace.get_tracer_provider(), TracerProvider)


def test_disabled_sets_nothing_up(no_otel_env: None) -> None:
    handle = otel_perf.configure(enabled=False)
    assert handle.tracer_provider is None
    assert not isinstance(trace.get_tracer_provider(), TracerProvider)


def test_traceparent_from_environment_is_continued(no_otel_env: None, monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    """A program started by an instrumented parent continues the parent's trace."""
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    monkeypatch.setenv("TRACEPARENT", f"00-{trace_id}-{parent_id}-01")
    monkeypatch.setattr(_sdk, "_attached_environment_context", False)
    token = context.attach(context.Context())
    try:
        handle = otel_perf.configure(output_dir=str(tmp_path))
        with trace.get_tracer("app").start_as_current_span("child") as span:
            assert format(span.get_span_context().trace_id, "032x") == trace_id
        handle.shutdown()
    finally:
        context.detach(token)
        monkeypatch.setattr(_sdk, "_attached_environment_context", False)
    (span_record,) = [s for _, r in iter_requests(tmp_path) for s in _otlpjson.spans(r)]
    assert span_record.parent_span_id == parent_id


def test_root_marker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(_process.ROOT_MARKER, raising=False)
    assert _process.mark_root() is True
    assert os.environ[_process.ROOT_MARKER] == str(os.getpid())
    monkeypatch.setenv(_process.ROOT_MARKER, "1")
    assert _process.is_root_process() is False


def test_default_exporter_choice(tmp_path: Path) -> None:
    assert _sdk.default_exporter("traces", {}) == "otel_perf_file"
    assert _sdk.default_exporter("traces", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}) == "otlp"
    assert _sdk.default_exporter("metrics", {"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://x:4318"}) == "otlp"
    assert _sdk.default_exporter("logs", {"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://x:4318"}) == "otel_perf_file"


def test_snapshot_pickles(no_otel_env: None, tmp_path: Path) -> None:
    import pickle

    handle = otel_perf.configure("snap", output_dir=str(tmp_path), pool_spans=False)
    snapshot = pickle.loads(pickle.dumps(handle.snapshot()))
    assert snapshot.service_name == "snap"
    assert snapshot.settings.pool_spans is False
    handle.shutdown()


def test_configure_knows_every_registered_instrumentor() -> None:
    """configure() loads otel-perf's instrumentors from a table (no entry-point scan at start-up): the
    table is exactly what pyproject.toml registers for the launcher."""
    from importlib.metadata import entry_points

    registered = {ep.name: tuple(ep.value.split(":")) for ep in entry_points(group="opentelemetry_instrumentor")
                  if ep.name.startswith("otel_perf_")}
    assert registered == _sdk.INSTRUMENTORS


def test_configure_knows_every_exporter_otel_perf_registers() -> None:
    """configure() makes otel-perf's own exporters from a table (no entry-point scan at start-up): the
    table is exactly what pyproject.toml registers."""
    from importlib.metadata import entry_points

    registered = {(signal, ep.name): tuple(ep.value.split(":"))
                  for signal in ("traces", "metrics", "logs")
                  for ep in entry_points(group=f"opentelemetry_{signal}_exporter")
                  if ep.value.startswith("otel_perf.")}
    assert registered == _sdk.OWN_EXPORTERS
