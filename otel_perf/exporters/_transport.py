"""Sending pre-encoded OTLP export requests to an ``OTLPTarget``, over gRPC or http/protobuf.

Why this module exists: durable export sends the bytes it spooled, and continuous profiling sends profiles
the SDK has no exporter for; neither can hand its bytes to the SDK's exporters (they take SDK objects and
encode them themselves). Both send through here: gRPC calls the service's ``Export`` method with the
request as raw bytes (no re-encoding), HTTP ``POST``s it as ``application/x-protobuf``. Each send says
whether the backend accepted the request, whether to retry it (the codes and statuses the OTLP
specification calls retryable), or whether it was rejected for good.

gRPC is imported only when a gRPC target first sends, so importing the exporters stays free of the gRPC
stack. A connection made before ``fork()`` belongs to the parent: the child opens its own.

Usage::

    transport = open_transport(resolve_target("traces"), max_backoff=30.0)
    result = transport.send(request.SerializeToString())
    if result.outcome is Outcome.RETRY: ...
"""

from __future__ import annotations

import enum
import gzip
import http.client
import os
import ssl
import zlib
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from otel_perf.exporters.otlp import OTLPTarget

__all__ = ["GrpcTransport", "HttpTransport", "Outcome", "SendResult", "Transport", "open_transport"]

_HTTP_RETRYABLE = frozenset({429, 502, 503, 504})
# The gRPC codes the OTLP specification (and the SDK's exporter) retry; every other code is final.
_GRPC_RETRYABLE = frozenset({"CANCELLED", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED",
                             "OUT_OF_RANGE", "UNAVAILABLE", "DATA_LOSS"})
_GRPC_SERVICES = {
    "traces": "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    "metrics": "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
    "logs": "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
    "profiles": "/opentelemetry.proto.collector.profiles.v1development.ProfilesService/Export",
}


class Outcome(enum.Enum):
    """What became of one request."""

    OK = "ok"
    RETRY = "retry"  # not taken this time (unreachable, overloaded): send it again later
    REJECT = "reject"  # refused for good: sending it again would be refused again


@dataclass(frozen=True)
class SendResult:
    outcome: Outcome
    detail: str = ""  # why, for a log line: the status or code and the backend's message
    retry_after: float | None = None  # seconds the backend asked to wait (HTTP ``Retry-After``)


class Transport(Protocol):
    def send(self, payload: bytes) -> SendResult:
        """Send one encoded export request."""

    def close(self) -> None:
        """Close the connection (a later send opens a new one)."""


def open_transport(target: OTLPTarget, max_backoff: float) -> GrpcTransport | HttpTransport:
    """The transport of ``target``'s protocol; ``max_backoff`` caps gRPC's own reconnect backoff."""
    return GrpcTransport(target, max_backoff) if target.protocol == "grpc" else HttpTransport(target)


def _read(path: str | None) -> bytes | None:
    if not path:
        return None
    with open(path, "rb") as handle:
        return handle.read()


class GrpcTransport:
    """Sends encoded requests with the service's ``Export`` method as raw bytes (no re-encoding)."""

    def __init__(self, target: OTLPTarget, max_backoff: float) -> None:
        self._target = target
        self._max_backoff = max_backoff
        self._channel: Any = None
        self._call: Any = None
        self._pid = -1

    def _ensure(self) -> Any:
        if self._call is not None and self._pid == os.getpid():
            return self._call
        import grpc

        # The channel's own reconnect backoff (up to 120 s by default) would hide a backend that came
        # back; keep it within ours.
        backoff_ms = max(100, int(self._max_backoff * 1000))
        options = [("grpc.initial_reconnect_backoff_ms", min(1000, backoff_ms)),
                   ("grpc.min_reconnect_backoff_ms", min(1000, backoff_ms)),
                   ("grpc.max_reconnect_backoff_ms", backoff_ms)]
        parts = urlsplit(self._target.endpoint)
        address = parts.netloc if parts.netloc else self._target.endpoint
        compression = grpc.Compression.Gzip if self._target.compression == "gzip" else None
        if self._target.insecure:
            channel = grpc.insecure_channel(address, options=options, compression=compression)
        else:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read(self._target.certificate_file),
                private_key=_read(self._target.client_key_file),
                certificate_chain=_read(self._target.client_certificate_file),
            )
            channel = grpc.secure_channel(address, credentials, options=options, compression=compression)
        # An inherited channel (after fork) belongs to the parent: never use or close it here.
        self._channel = channel
        self._call = channel.unary_unary(_GRPC_SERVICES[self._target.signal])
        self._pid = os.getpid()
        return self._call

    def send(self, payload: bytes) -> SendResult:
        import grpc

        call = self._ensure()
        try:
            call(payload, timeout=self._target.timeout, metadata=self._target.headers or None)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            name = getattr(code, "name", str(code))
            detail = f"gRPC {name}: {exc.details() if hasattr(exc, 'details') else exc}"
            if name == "UNAVAILABLE":
                # A fresh channel connects at our next attempt instead of after the channel's own backoff.
                self.close()
            return SendResult(Outcome.RETRY if name in _GRPC_RETRYABLE else Outcome.REJECT, detail)
        return SendResult(Outcome.OK)

    def close(self) -> None:
        if self._channel is not None and self._pid == os.getpid():
            self._channel.close()
        self._channel = self._call = None


class HttpTransport:
    """POSTs encoded requests as ``application/x-protobuf`` over one kept-alive connection."""

    def __init__(self, target: OTLPTarget) -> None:
        self._target = target
        parts = urlsplit(target.endpoint)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or "localhost"
        self._port = parts.port or (443 if self._https else 80)
        self._path = parts.path or "/"
        if parts.query:
            self._path += "?" + parts.query
        self._conn: http.client.HTTPConnection | None = None
        self._pid = -1

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        if self._https:
            context = ssl.create_default_context(cafile=self._target.certificate_file)
            if self._target.client_certificate_file:
                context.load_cert_chain(self._target.client_certificate_file, self._target.client_key_file)
            self._conn = http.client.HTTPSConnection(self._host, self._port, timeout=self._target.timeout,
                                                     context=context)
        else:
            self._conn = http.client.HTTPConnection(self._host, self._port, timeout=self._target.timeout)
        self._pid = os.getpid()
        return self._conn

    def send(self, payload: bytes) -> SendResult:
        headers = {"Content-Type": "application/x-protobuf", **dict(self._target.headers)}
        body = payload
        if self._target.compression == "gzip":
            body = gzip.compress(payload)
            headers["Content-Encoding"] = "gzip"
        elif self._target.compression == "deflate":
            body = zlib.compress(payload)
            headers["Content-Encoding"] = "deflate"
        conn = self._connection()
        try:
            conn.request("POST", self._path, body=body, headers=headers)
            response = conn.getresponse()
            answer = response.read()
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            return SendResult(Outcome.RETRY, f"{type(exc).__name__}: {exc}")
        if 200 <= response.status < 300:
            return SendResult(Outcome.OK)
        detail = f"HTTP {response.status}: {answer[:200]!r}"
        if response.status in _HTTP_RETRYABLE:
            retry_after: float | None = None
            try:
                retry_after = float(response.getheader("Retry-After") or "")
            except ValueError:
                pass
            return SendResult(Outcome.RETRY, detail, retry_after)
        return SendResult(Outcome.REJECT, detail)

    def close(self) -> None:
        if self._conn is not None and self._pid == os.getpid():
            self._conn.close()
        self._conn = None
