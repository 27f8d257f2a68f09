"""OTLP exporters (gRPC or http/protobuf) chosen from the standard ``OTEL_EXPORTER_OTLP_*`` variables.

Why this module exists: otel-perf decides between OTLP and local files by whether an endpoint is
configured, ``otel-perf doctor`` checks that the endpoint answers, and durable export needs the same
protocol choice; the standard exporters themselves come from ``opentelemetry-exporter-otlp`` unchanged.

:func:`resolve_target` is the one place where a signal's ``OTEL_EXPORTER_OTLP_*`` settings (endpoint,
protocol, headers, TLS, compression, timeout; the signal's own variable first, then the general one) are
turned into where and how to send: the durable exporters and the profiles exporter use it (the standard
exporters read the same variables themselves).

It also decides what ``OTEL_PERF_SPOOL_DIR`` does to the exporter names (:func:`spooled_exporter_names`,
used by both ways in): a spool directory is the user saying "do not lose my data", so an ``otlp``
exporter, which the OpenTelemetry Operator and many deployments name for every signal, becomes durable
OTLP (``otlp_durable``); other explicit choices (``console``, ``none``, a vendor's, ``otlp_proto_http``)
stay as set. A spool directory that cannot be used is reported once, naming the variable and why, and
export goes on over plain OTLP: telemetry without a spool is better than none.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from otel_perf._safety import log_once

if TYPE_CHECKING:
    from otel_perf._config import Settings

__all__ = [
    "OTLPTarget",
    "Signal",
    "apply_spool_choice",
    "check_endpoint",
    "default_exporter",
    "endpoint_configured",
    "otlp_exporter",
    "otlp_protocol",
    "resolve_target",
    "resolved_endpoint",
    "spool_directory_problem",
    "spooled_exporter_names",
]

Signal = Literal["traces", "metrics", "logs", "profiles"]

_DEFAULT_GRPC = "http://localhost:4317"
_DEFAULT_HTTP = "http://localhost:4318"
_DEFAULT_TIMEOUT = 10.0
#: The HTTP path of each signal under OTEL_EXPORTER_OTLP_ENDPOINT (profiles: alpha, "v1development").
_HTTP_PATHS = {"traces": "/v1/traces", "metrics": "/v1/metrics", "logs": "/v1/logs",
               "profiles": "/v1development/profiles"}


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
    return f"{(general or _DEFAULT_HTTP).rstrip('/')}{_HTTP_PATHS[signal]}"


def _env(environ: Mapping[str, str], signal: str, key: str) -> str | None:
    """``OTEL_EXPORTER_OTLP_<SIGNAL>_<KEY>``, else ``OTEL_EXPORTER_OTLP_<KEY>``; empty counts as unset."""
    for name in (f"OTEL_EXPORTER_OTLP_{signal.upper()}_{key}", f"OTEL_EXPORTER_OTLP_{key}"):
        value = (environ.get(name) or "").strip()
        if value:
            return value
    return None


@dataclass(frozen=True)
class OTLPTarget:
    """Where and how one signal's export requests go."""

    signal: str
    protocol: str  # "grpc" | "http/protobuf"
    endpoint: str
    headers: tuple[tuple[str, str], ...]
    insecure: bool
    certificate_file: str | None
    client_key_file: str | None
    client_certificate_file: str | None
    compression: str | None  # None | "gzip" | "deflate"
    timeout: float


def resolve_target(signal: Signal, environ: Mapping[str, str] | None = None, *, endpoint: str | None = None,
                   protocol: str | None = None, headers: Mapping[str, str] | None = None,
                   insecure: bool | None = None, certificate_file: str | None = None,
                   compression: str | None = None, timeout: float | None = None) -> OTLPTarget:
    """Resolve ``signal``'s ``OTEL_EXPORTER_OTLP_*`` settings (arguments override them).

    Each setting is read from the signal's own variable (``OTEL_EXPORTER_OTLP_PROFILES_HEADERS``), then
    the general one (``OTEL_EXPORTER_OTLP_HEADERS``). Timeouts are seconds, as the Python SDK's exporters
    read them. A value that cannot be used is reported once, naming the variable, and the default is used:
    an unknown protocol means http/protobuf, an unknown compression none, a bad timeout 10 s.
    """
    environ = os.environ if environ is None else environ
    proto = (protocol or otlp_protocol(signal, environ)).lower()
    if proto not in ("grpc", "http/protobuf"):
        log_once(("otlp-protocol", signal, proto),
                 "otel-perf: Expected OTEL_EXPORTER_OTLP_PROTOCOL to be grpc or http/protobuf for %s, got %r; "
                 "using http/protobuf", signal, proto)
        proto = "http/protobuf"
    url = endpoint or resolved_endpoint(signal, {**environ, "OTEL_EXPORTER_OTLP_PROTOCOL": proto,
                                                  f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL": proto})
    scheme = urlsplit(url).scheme if "://" in url else ""
    if insecure is None:
        raw = _env(environ, signal, "INSECURE")
        insecure = raw.lower() == "true" if raw is not None else scheme == "http"
    if scheme == "https":
        insecure = False
    if headers is None:
        from opentelemetry.util.re import parse_env_headers

        raw_headers = _env(environ, signal, "HEADERS")
        headers = parse_env_headers(raw_headers, liberal=True) if raw_headers else {}
    if compression is None:
        compression = _env(environ, signal, "COMPRESSION") or "none"
    comp = compression.lower()
    if comp not in ("none", "gzip", "deflate") or (comp == "deflate" and proto == "grpc"):
        log_once(("otlp-compression", signal, comp),
                 "otel-perf: Expected OTEL_EXPORTER_OTLP_COMPRESSION to be gzip or none for %s, got %r; "
                 "sending uncompressed", signal, comp)
        comp = "none"
    if timeout is None:
        raw_timeout = _env(environ, signal, "TIMEOUT")
        try:
            timeout = float(raw_timeout) if raw_timeout is not None else _DEFAULT_TIMEOUT
        except ValueError:
            log_once(("otlp-timeout", signal, raw_timeout),
                     "otel-perf: Expected OTEL_EXPORTER_OTLP_TIMEOUT to be seconds for %s, got %r; using %s",
                     signal, raw_timeout, _DEFAULT_TIMEOUT)
            timeout = _DEFAULT_TIMEOUT
    if not timeout > 0:
        timeout = _DEFAULT_TIMEOUT
    return OTLPTarget(
        signal=signal, protocol=proto, endpoint=url,
        headers=tuple((k.lower() if proto == "grpc" else k, v) for k, v in headers.items()),
        insecure=insecure,
        certificate_file=certificate_file or _env(environ, signal, "CERTIFICATE"),
        client_key_file=_env(environ, signal, "CLIENT_KEY"),
        client_certificate_file=_env(environ, signal, "CLIENT_CERTIFICATE"),
        compression=None if comp == "none" else comp,
        timeout=timeout,
    )


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


_SIGNALS: tuple[Signal, ...] = ("traces", "metrics", "logs")


def default_exporter(signal: str, env: Mapping[str, str] | None = None,
                     settings: Settings | None = None) -> str:
    """The exporter otel-perf picks for ``signal`` when ``OTEL_<SIGNAL>_EXPORTER`` is unset.

    ``otlp_durable`` when ``OTEL_PERF_SPOOL_DIR`` is set, ``otlp`` when an OTLP endpoint is configured,
    else ``otel_perf_file`` (OTLP JSON lines under ``OTEL_PERF_OUTPUT_DIR``) instead of failing to reach
    ``localhost:4317``.
    """
    from otel_perf._config import load_settings

    environ = os.environ if env is None else env
    current = settings or load_settings(environ)
    if current.spool_dir and _has_exporter(signal, "otlp_durable"):
        return "otlp_durable"
    if endpoint_configured(signal, environ):  # type: ignore[arg-type]
        return "otlp"
    return "otel_perf_file"


def _has_exporter(signal: str, name: str) -> bool:
    from importlib.metadata import entry_points

    return any(True for _ in entry_points(group=f"opentelemetry_{signal}_exporter", name=name))


def spool_directory_problem(spool_dir: str) -> str | None:
    """Why ``spool_dir`` cannot hold a spool (it is made if missing), or None.

    The first time a directory is found unusable, one warning names ``OTEL_PERF_SPOOL_DIR``, the
    directory and why (in the root process of the tree only: its children would repeat it).
    """
    from otel_perf.exporters._spool import check_directory

    problem = check_directory(spool_dir)
    if problem is not None:
        marker = os.environ.get("OTEL_PERF_ROOT_PID")
        level = logging.DEBUG if marker and marker != str(os.getpid()) else logging.WARNING
        log_once(("spool-dir-unusable", spool_dir),
                 "otel-perf: OTEL_PERF_SPOOL_DIR=%s cannot be used (%s); exporting over plain OTLP without "
                 "a spool, so batches sent while the backend is unreachable can be lost. Point it at a "
                 "writable directory (otel-perf doctor checks it).", spool_dir, problem, level=level)
    return problem


#: Plain OTLP as named in OTEL_<SIGNAL>_EXPORTER: the stock name, and the lazy one `otel-perf run` names.
_PLAIN_OTLP = ("otlp", "otel_perf_otlp")


def spooled_exporter_names(names: list[str], settings: Settings, *,
                           spool_usable: bool | None = None) -> list[str]:
    """The exporter names to use for a signal, given ``OTEL_PERF_SPOOL_DIR``.

    With a usable spool directory ``otlp`` (or ``otel_perf_otlp``) becomes ``otlp_durable``; with an
    unusable one ``otlp_durable`` becomes ``otlp``; without one, or for any other name, the names stay as
    given (duplicates dropped).

    Args:
        names: the exporter names ``OTEL_<SIGNAL>_EXPORTER`` gives (or otel-perf's default).
        settings: the settings in force.
        spool_usable: whether the spool directory can be used, if already known (else it is checked,
            which makes the directory).
    """
    if not settings.spool_dir or not any(n in (*_PLAIN_OTLP, "otlp_durable") for n in names):
        return names
    if spool_usable is None:
        spool_usable = spool_directory_problem(settings.spool_dir) is None
    if spool_usable:
        mapped = ["otlp_durable" if n in _PLAIN_OTLP else n for n in names]
    else:
        mapped = ["otlp" if n == "otlp_durable" else n for n in names]
    return list(dict.fromkeys(mapped))


def apply_spool_choice(environ: MutableMapping[str, str], settings: Settings) -> None:
    """Rewrite ``OTEL_<SIGNAL>_EXPORTER`` in ``environ`` by :func:`spooled_exporter_names`.

    For the launcher, whose SDK configurator reads the exporter names from the environment: the distro
    and configurator call this before it runs.
    """
    for signal in _SIGNALS:
        variable = f"OTEL_{signal.upper()}_EXPORTER"
        raw = (environ.get(variable) or "").strip()
        if not raw:
            continue
        names = [name.strip() for name in raw.split(",") if name.strip()]
        chosen = spooled_exporter_names(names, settings)
        if chosen != names:
            environ[variable] = ",".join(chosen)

