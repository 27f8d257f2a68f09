"""OTLP exporters (gRPC or http/protobuf) chosen from the standard ``OTEL_EXPORTER_OTLP_*`` variables.

Why this module exists: otel-perf decides between OTLP and local files by whether an endpoint is
configured, ``otel-perf doctor`` checks that the endpoint answers, and durable export needs the same
protocol choice; the standard exporters themselves come from ``opentelemetry-exporter-otlp`` unchanged.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import urlsplit

__all__ = [
    "Signal",
    "check_endpoint",
    "endpoint_configured",
    "otlp_exporter",
    "otlp_protocol",
    "resolved_endpoint",
]

Signal = Literal["traces", "metrics", "logs"]

_DEFAULT_GRPC = "http://localhost:4317"
_DEFAULT_HTTP = "http://localhost:4318"


def otlp_protocol(signal: Signal, env: Mapping[str, str] | None = None) -> str:
    """``grpc`` or ``http/protobuf`` for ``signal``, from the signal's variable, then the general one."""
    environ = os.environ if env is None else env
    value = (environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL")
             or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc").strip()
    return value


def endpoint_configured(signal: Signal | None = None, env: Mapping[str, str] | None = None) -> bool:
    """Whether an OTLP endpoint is set for ``signal`` (any signal when None)."""
    environ = os.environ if env is None else env
    if (environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or "").strip():
        return True
    signals: tuple[str, ...] = (signal,) if signal else ("traces", "metrics", "logs")
    return any((environ.get(f"OTEL_EXPORTER_OTLP_{s.upper()}_ENDPOINT") or "").strip() for s in signals)


def resolved_endpoint(signal: Signal, env: Mapping[str, str] | None = None) -> str:
    """The URL the standard exporter for ``signal`` will send to."""
    environ = os.environ if env is None else env
    protocol = otlp_protocol(signal, environ)
    specific = (environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT") or "").strip()
    if specific:
        return specific
    general = (environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or "").strip()
    if protocol == "grpc":
        return general or _DEFAULT_GRPC
    return f"{(general or _DEFAULT_HTTP).rstrip('/')}/v1/{signal}"


def otlp_exporter(signal: Signal, **kwargs: Any) -> Any:
    """A standard OTLP exporter for ``signal`` over the configured protocol.

    Raises:
        ValueError: the protocol variable names an unsupported protocol.
    """
    protocol = otlp_protocol(signal)
    if protocol == "grpc":
        if signal == "traces":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            return OTLPSpanExporter(**kwargs)
        if signal == "metrics":
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

            return OTLPMetricExporter(**kwargs)
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter

        return OTLPLogExporter(**kwargs)
    if protocol == "http/protobuf":
        if signal == "traces":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpan

            return HttpSpan(**kwargs)
        if signal == "metrics":
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
                OTLPMetricExporter as HttpMetric,
            )

            return HttpMetric(**kwargs)
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLog

        return HttpLog(**kwargs)
    raise ValueError(
        f"Expected OTEL_EXPORTER_OTLP_PROTOCOL to be grpc or http/protobuf, got {protocol!r}"
    )


def check_endpoint(signal: Signal = "traces", env: Mapping[str, str] | None = None,
                   timeout: float = 2.0) -> tuple[bool, str]:
    """Try a TCP connection to the endpoint ``signal`` uses. Returns (answers, human message)."""
    url = resolved_endpoint(signal, env)
    parts = urlsplit(url if "://" in url else f"http://{url}")
    host = parts.hostname or "localhost"
    default_port = 4317 if otlp_protocol(signal, env) == "grpc" else 4318
    try:
        port = parts.port or (443 if parts.scheme == "https" else default_port)
    except ValueError:
        return False, f"{url}: not a valid endpoint URL (check OTEL_EXPORTER_OTLP_ENDPOINT)"
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True, f"{url}: answers"
    except OSError as exc:
        return False, (
            f"{url}: does not answer ({exc.strerror or exc}). Start a collector there, set "
            f"OTEL_EXPORTER_OTLP_ENDPOINT to one that runs, or unset it to write local files "
            f"with `otel-perf run`."
        )
