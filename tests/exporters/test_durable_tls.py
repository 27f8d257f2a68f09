"""Durable export over TLS with the configured certificate and headers: real HTTPS and gRPC-TLS servers.

The OTLP test receiver speaks plain text only, so these tests run small TLS servers of their own (loopback,
a throwaway self-signed certificate made with ``openssl``) that record what arrived and with which headers.
"""

from __future__ import annotations

import gzip
import ssl
import subprocess
import threading
from collections.abc import Iterator
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider

from otel_perf.exporters.durable import DurableSpanExporter
from tests.conftest import require_binary

FAST = {"min_backoff": 0.05, "max_backoff": 0.2, "poll_interval": 0.2, "timeout": 2.0}


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key."""
    openssl = require_binary("openssl", "openssl")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def _span_names(body: bytes) -> list[str]:
    request = trace_service_pb2.ExportTraceServiceRequest()
    request.ParseFromString(body)
    return [s.name for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]


def _spans(names: list[str]) -> list[Any]:
    tracer = TracerProvider().get_tracer("tls")
    out = []
    for name in names:
        span = tracer.start_span(name)
        span.end()
        out.append(span)
    return out


@pytest.fixture
def https_server(certificate: tuple[Path, Path]) -> Iterator[tuple[int, list[tuple[dict[str, str], bytes]]]]:
    """An HTTPS server on loopback recording (headers, body) of every POST."""
    received: list[tuple[dict[str, str], bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            received.append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(certificate[0]), str(certificate[1]))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_https_with_the_configured_certificate_headers_and_gzip(
        tmp_path: Path, certificate: tuple[Path, Path], https_server: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE verifies the server; headers and gzip reach it."""
    port, received = https_server
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", str(certificate[0]))
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%20t0k3n")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")
    exporter = DurableSpanExporter(spool_dir=str(tmp_path / "spool"), protocol="http/protobuf",
                                   endpoint=f"https://127.0.0.1:{port}/v1/traces", **FAST)
    try:
        exporter.export(_spans(["secure"]))
        assert exporter.force_flush(5000)
    finally:
        exporter.shutdown()
    [(headers, body)] = received
    assert headers["authorization"] == "Bearer t0k3n"
    assert headers["content-type"] == "application/x-protobuf"
    assert headers["content-encoding"] == "gzip"
    assert _span_names(gzip.decompress(body)) == ["secure"]


def test_https_without_the_certificate_keeps_the_batch_instead_of_sending_it_unverified(
        tmp_path: Path, https_server: Any) -> None:
    """A server the exporter cannot verify gets nothing; the batch stays spooled for a fixed setup."""
    port, received = https_server
    exporter = DurableSpanExporter(spool_dir=str(tmp_path / "spool"), protocol="http/protobuf",
                                   endpoint=f"https://127.0.0.1:{port}/v1/traces", **FAST)
    try:
        exporter.export(_spans(["unverified"]))
        assert not exporter.force_flush(500)
        assert received == []
        assert len(exporter.pending) == 1
    finally:
        exporter.shutdown()


def test_grpc_tls_with_the_configured_certificate_and_headers(
        tmp_path: Path, certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """A TLS gRPC endpoint is verified with OTEL_EXPORTER_OTLP_CERTIFICATE; headers arrive as metadata."""
    received: list[tuple[dict[str, str], list[str]]] = []

    class Traces(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
        def Export(self, request: Any, context: Any) -> Any:
            metadata = {k: v for k, v in context.invocation_metadata()}
            received.append((metadata, _span_names(request.SerializeToString())))
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), server)
    credentials = grpc.ssl_server_credentials([(certificate[1].read_bytes(), certificate[0].read_bytes())])
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_CERTIFICATE", str(certificate[0]))
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "X-Tenant=blue")
    exporter = DurableSpanExporter(spool_dir=str(tmp_path / "spool"), protocol="grpc",
                                   endpoint=f"https://127.0.0.1:{port}", **FAST)
    try:
        exporter.export(_spans(["grpc-secure"]))
        assert exporter.force_flush(5000)
    finally:
        exporter.shutdown()
        server.stop(grace=0).wait(5)
    [(metadata, names)] = received
    assert metadata["x-tenant"] == "blue"
    assert names == ["grpc-secure"]
