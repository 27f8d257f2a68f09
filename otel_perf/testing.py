"""Test otel-perf instrumentation: in-memory providers, pytest fixtures and a real OTLP receiver.

Why this module exists: users test their own instrumented code, and otel-perf's own tests need the same
things: SDK providers that keep what they receive, OpenTelemetry globals reset between tests, and a real
OTLP endpoint (gRPC with the ``opentelemetry-proto`` service definitions and ``grpcio``, and
http/protobuf) on loopback to point ``opentelemetry-instrument`` at.

The receiver also takes OTLP profiles (the alpha ``v1development`` service, gRPC and HTTP), which
continuous profiling sends: :meth:`OTLPReceiver.profiles` gives them back as ``opentelemetry-proto``'s
own messages.

It is registered as the ``pytest11`` plugin ``otel_perf``, so its fixtures are available in any test
suite with otel-perf installed: ``span_exporter``, ``tracer_provider``, ``metric_reader``,
``meter_provider``, ``otel_globals`` and ``otlp_receiver``. Nothing happens until a test asks for one.

Usage::

    def test_my_tool(tracer_provider, span_exporter, meter_provider, metric_reader):
        ...
        assert [s.name for s in span_exporter.get_finished_spans()] == ["execute_tool search"]
        assert histogram_points(metric_reader, "gen_ai.execute_tool.duration")[0].count == 1

    def test_app(otlp_receiver):
        env = otlp_receiver.env("grpc")          # OTEL_EXPORTER_OTLP_* pointing at the receiver
        ...run the app with env...
        otlp_receiver.wait_for(lambda r: r.spans(), timeout=20)
"""

from __future__ import annotations

import gzip
import json
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricsData
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_perf import _otlpjson

__all__ = [
    "OTLPReceiver",
    "histogram_points",
    "meter_provider",
    "metric_points",
    "metric_reader",
    "otel_globals",
    "otlp_receiver",
    "reset_otel_globals",
    "span_exporter",
    "tracer_provider",
]


# --- OpenTelemetry globals ---------------------------------------------------------------------------


def reset_otel_globals() -> None:
    """Forget the global tracer, meter and logger providers (they can otherwise be set only once)."""
    from otel_perf import _config, _process, _sdk_internals

    _sdk_internals.forget_global_providers()
    _process.set_current_handle(None)
    _config.set_settings(None)


@pytest.fixture
def otel_globals() -> Iterator[None]:
    """Reset the OpenTelemetry globals before and after the test."""
    reset_otel_globals()
    yield
    from otel_perf._process import current_handle

    handle = current_handle()
    if handle is not None:
        handle.shutdown()
    reset_otel_globals()


@pytest.fixture
def span_exporter() -> InMemorySpanExporter:
    """Spans finished by ``tracer_provider``."""
    return InMemorySpanExporter()


@pytest.fixture
def tracer_provider(otel_globals: None, span_exporter: InMemorySpanExporter) -> Iterator[Any]:
    """An SDK tracer provider, set as the global one, exporting synchronously into ``span_exporter``."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(span_exporter))
    trace.set_tracer_provider(provider)
    yield provider
    provider.shutdown()


@pytest.fixture
def metric_reader() -> InMemoryMetricReader:
    """Collects ``meter_provider``'s metrics on demand (``metric_reader.get_metrics_data()``)."""
    return InMemoryMetricReader()


@pytest.fixture
def meter_provider(otel_globals: None, metric_reader: InMemoryMetricReader) -> Iterator[Any]:
    """An SDK meter provider, set as the global one, read by ``metric_reader``."""
    from opentelemetry import metrics
    from opentelemetry.sdk.metrics import MeterProvider

    provider = MeterProvider(metric_readers=[metric_reader])
    metrics.set_meter_provider(provider)
    yield provider
    provider.shutdown()


def metric_points(data: MetricsData | InMemoryMetricReader | None, name: str) -> list[Any]:
    """The data points of metric ``name`` (collects first when given a reader)."""
    if isinstance(data, InMemoryMetricReader):
        data = data.get_metrics_data()
    points: list[Any] = []
    if data is None:
        return points
    for resource_metrics in data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                if metric.name == name:
                    points.extend(metric.data.data_points)
    return points


def histogram_points(data: MetricsData | InMemoryMetricReader | None, name: str) -> list[Any]:
    """Alias of :func:`metric_points` for readability with histograms."""
    return metric_points(data, name)


# --- the OTLP receiver --------------------------------------------------------------------------------

_SIGNAL_BY_PATH = {"/v1/traces": "traces", "/v1/metrics": "metrics", "/v1/logs": "logs",
                   "/v1development/profiles": "profiles"}


class OTLPReceiver:
    """A real OTLP receiver on loopback: gRPC and http/protobuf (and http/json), all four signals.

    Everything received is kept as OTLP JSON requests (the shape the file exporter writes) and can be
    read flattened with :meth:`spans`, :meth:`metric_points` and :meth:`logs`; profiles are also kept as
    received and read back with :meth:`profiles`. For fault injection,
    :attr:`status` makes it refuse (``"unavailable"``: gRPC UNAVAILABLE / HTTP 503; ``"reject"``: gRPC
    INVALID_ARGUMENT / HTTP 400) and :attr:`stall_seconds` makes every request wait first.
    """

    def __init__(self, host: str = "127.0.0.1", grpc_port: int = 0, http_port: int = 0) -> None:
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("OTLPReceiver binds loopback only")
        self.host = host
        self.grpc_port = grpc_port
        self.http_port = http_port
        self.status = "ok"
        self.stall_seconds = 0.0
        self.requests: list[tuple[str, str, dict[str, Any]]] = []  # (signal, transport, request)
        self.profile_payloads: list[tuple[str, bytes]] = []  # (transport, serialized request)
        self._lock = threading.Condition()
        self._grpc_server: Any = None
        self._http_server: ThreadingHTTPServer | None = None
        self._http_thread: threading.Thread | None = None

    # lifecycle
    def start(self) -> OTLPReceiver:
        self._start_grpc()
        self._start_http()
        return self

    def stop(self) -> None:
        if self._grpc_server is not None:
            self._grpc_server.stop(grace=0).wait(5)
            self._grpc_server = None
        if self._http_server is not None:
            self._http_server.shutdown()
            self._http_server.server_close()
            self._http_server = None
        if self._http_thread is not None:
            self._http_thread.join(5)
            self._http_thread = None

    def __enter__(self) -> OTLPReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def grpc_endpoint(self) -> str:
        return f"http://{self.host}:{self.grpc_port}"

    @property
    def http_endpoint(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    def env(self, protocol: str = "grpc") -> dict[str, str]:
        """``OTEL_*`` variables that send every signal here over ``protocol`` (profiles too: they follow the
        traces), exporting quickly."""
        endpoint = self.grpc_endpoint if protocol == "grpc" else self.http_endpoint
        return {
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
            "OTEL_EXPORTER_OTLP_INSECURE": "true",
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_METRICS_EXPORTER": "otlp",
            "OTEL_LOGS_EXPORTER": "otlp",
            "OTEL_BSP_SCHEDULE_DELAY": "200",
            "OTEL_BLRP_SCHEDULE_DELAY": "200",
            "OTEL_METRIC_EXPORT_INTERVAL": "500",
        }

    # storage
    def _store(self, signal: str, transport: str, request: dict[str, Any], payload: bytes | None = None) -> None:
        with self._lock:
            self.requests.append((signal, transport, request))
            if payload is not None:
                self.profile_payloads.append((transport, payload))
            self._lock.notify_all()

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()
            self.profile_payloads.clear()

    def _of(self, signal: str, transport: str | None) -> list[dict[str, Any]]:
        with self._lock:
            return [r for s, t, r in self.requests if s == signal and (transport is None or t == transport)]

    def spans(self, transport: str | None = None) -> list[_otlpjson.Span]:
        return [s for r in self._of("traces", transport) for s in _otlpjson.spans(r)]

    def metric_points(self, name: str | None = None, transport: str | None = None) -> list[_otlpjson.MetricPoint]:
        points = [p for r in self._of("metrics", transport) for p in _otlpjson.metric_points(r)]
        return [p for p in points if name is None or p.name == name]

    def latest_points(self, name: str) -> list[_otlpjson.MetricPoint]:
        """The most recent point of each series (attribute set and resource) of metric ``name``."""
        latest: dict[Any, _otlpjson.MetricPoint] = {}
        for point in self.metric_points(name):
            key = (json.dumps(point.attributes, sort_keys=True, default=str),
                   json.dumps(point.resource, sort_keys=True, default=str))
            if key not in latest or point.time >= latest[key].time:
                latest[key] = point
        return list(latest.values())

    def logs(self, transport: str | None = None) -> list[_otlpjson.LogRecord]:
        return [rec for r in self._of("logs", transport) for rec in _otlpjson.logs(r)]

    def profiles(self, transport: str | None = None) -> list[Any]:
        """The profiles export requests received, as ``ExportProfilesServiceRequest`` messages."""
        from opentelemetry.proto.collector.profiles.v1development.profiles_service_pb2 import (
            ExportProfilesServiceRequest,
        )

        with self._lock:
            payloads = [data for t, data in self.profile_payloads if transport is None or t == transport]
        return [ExportProfilesServiceRequest.FromString(data) for data in payloads]

    def wait_for(self, predicate: Callable[[OTLPReceiver], Any], timeout: float = 30.0) -> Any:
        """Wait until ``predicate(self)`` is truthy and return its value; AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                value = predicate(self)
                if value:
                    return value
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"OTLPReceiver: condition not met within {timeout} s; "
                                         f"received {len(self.requests)} requests")
                self._lock.wait(min(remaining, 0.2))

    # gRPC
    def _start_grpc(self) -> None:
        import grpc
        from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
        from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
        from opentelemetry.proto.collector.profiles.v1development import (
            profiles_service_pb2,
            profiles_service_pb2_grpc,
        )
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

        from otel_perf.exporters.files import request_to_json

        receiver = self

        def handle(signal: str, request: Any, context: Any, response: Any) -> Any:
            if receiver.stall_seconds:
                time.sleep(receiver.stall_seconds)
            if receiver.status == "unavailable":
                context.abort(grpc.StatusCode.UNAVAILABLE, "receiver unavailable (test)")
            if receiver.status == "reject":
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "receiver rejects (test)")
            payload = request.SerializeToString() if signal == "profiles" else None
            receiver._store(signal, "grpc", json.loads(request_to_json(request)), payload)
            return response

        class Traces(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
            def Export(self, request: Any, context: Any) -> Any:
                return handle("traces", request, context, trace_service_pb2.ExportTraceServiceResponse())

        class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):  # type: ignore[misc]
            def Export(self, request: Any, context: Any) -> Any:
                return handle("metrics", request, context, metrics_service_pb2.ExportMetricsServiceResponse())

        class Logs(logs_service_pb2_grpc.LogsServiceServicer):  # type: ignore[misc]
            def Export(self, request: Any, context: Any) -> Any:
                return handle("logs", request, context, logs_service_pb2.ExportLogsServiceResponse())

        class Profiles(profiles_service_pb2_grpc.ProfilesServiceServicer):  # type: ignore[misc]
            def Export(self, request: Any, context: Any) -> Any:
                return handle("profiles", request, context, profiles_service_pb2.ExportProfilesServiceResponse())

        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), server)  # type: ignore[no-untyped-call]
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Metrics(), server)  # type: ignore[no-untyped-call]
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(Logs(), server)  # type: ignore[no-untyped-call]
        profiles_service_pb2_grpc.add_ProfilesServiceServicer_to_server(Profiles(), server)  # type: ignore[no-untyped-call]
        self.grpc_port = server.add_insecure_port(f"{self.host}:{self.grpc_port}")
        server.start()
        self._grpc_server = server

    # HTTP
    def _start_http(self) -> None:
        from google.protobuf import json_format
        from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
        from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
        from opentelemetry.proto.collector.profiles.v1development.profiles_service_pb2 import (
            ExportProfilesServiceRequest,
        )
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        from otel_perf.exporters.files import request_to_json

        messages: dict[str, Any] = {"traces": ExportTraceServiceRequest, "metrics": ExportMetricsServiceRequest,
                                    "logs": ExportLogsServiceRequest, "profiles": ExportProfilesServiceRequest}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _reply(self, code: int, body: bytes = b"", content_type: str = "application/x-protobuf") -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                signal = _SIGNAL_BY_PATH.get(self.path.split("?")[0])
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                if receiver._http_server is None:
                    # Stopped: a kept-alive connection must not outlive the receiver ("down" means down).
                    self.close_connection = True
                    return
                if signal is None:
                    self._reply(404, b"unknown path", "text/plain")
                    return
                if receiver.stall_seconds:
                    time.sleep(receiver.stall_seconds)
                if receiver.status == "unavailable":
                    self._reply(503, b"unavailable (test)", "text/plain")
                    return
                if receiver.status == "reject":
                    self._reply(400, b"rejected (test)", "text/plain")
                    return
                encoding = (self.headers.get("Content-Encoding") or "").lower()
                try:
                    if encoding == "gzip":
                        body = gzip.decompress(body)
                    elif encoding == "deflate":
                        body = zlib.decompress(body)
                    message = messages[signal]()
                    if "json" in (self.headers.get("Content-Type") or ""):
                        json_format.Parse(body.decode(), message)
                    else:
                        message.ParseFromString(body)
                except Exception as exc:
                    self._reply(400, f"cannot decode: {exc}".encode(), "text/plain")
                    return
                payload = message.SerializeToString() if signal == "profiles" else None
                receiver._store(signal, "http", json.loads(request_to_json(message)), payload)
                self._reply(200, b"")

        server = ThreadingHTTPServer((self.host, self.http_port), Handler)
        server.daemon_threads = True
        self.http_port = server.server_address[1]
        self._http_server = server
        self._http_thread = threading.Thread(target=server.serve_forever, name="otlp-test-http", daemon=True)
        self._http_thread.start()


@pytest.fixture
def otlp_receiver() -> Iterator[OTLPReceiver]:
    """A started :class:`OTLPReceiver` on loopback, stopped after the test."""
    receiver = OTLPReceiver().start()
    try:
        yield receiver
    finally:
        receiver.stop()
