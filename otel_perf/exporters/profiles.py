"""Where continuous profiling's profiles go: OTLP (gRPC or HTTP), durable OTLP, or OTLP JSON lines files.

Why this module exists: the OpenTelemetry Python SDK has no profiles signal (no exporter, no
``OTEL_PROFILES_EXPORTER``), so otel-perf sends profiles itself. Profiles go where the traces go, because
their samples link to spans: the exporter is chosen from the trace exporter's name
(``OTEL_TRACES_EXPORTER``, or what otel-perf picks when it is unset):

* ``otlp`` (also ``otlp_proto_grpc``, ``otlp_proto_http``): OTLP, to the endpoint, protocol, headers,
  TLS files, compression and timeout of ``OTEL_EXPORTER_OTLP_PROFILES_*``, else ``OTEL_EXPORTER_OTLP_*``
  (:func:`otel_perf.exporters.otlp.resolve_target`); gRPC ``ProfilesService/Export`` or HTTP
  ``POST /v1development/profiles``;
* ``otlp_durable`` (also ``otlp`` with ``OTEL_PERF_SPOOL_DIR``): spooled like the other signals, in
  ``<spool>/profiles/``;
* ``otel_perf_file``: ``profiles-<start>-<pid>.jsonl`` under ``OTEL_PERF_OUTPUT_DIR``, beside the traces;
* anything else (``none``, ``console``, a vendor's): OTLP when an endpoint is configured for profiles,
  else the files, said once on the ``otel_perf`` logger.

Plain OTLP retries a profile that the backend could not take (unreachable, 429, 5xx, the retryable gRPC
codes) with a doubling backoff within the exporter's timeout, then drops it, logging the first failure of
each kind once; a rejected profile is dropped at once. The last profile, at shutdown, gets one attempt: a
program does not wait out the timeout at exit for a backend that is down (durable mode keeps it instead).
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from otel_perf._config import Settings
from otel_perf._safety import log_once
from otel_perf.exporters.otlp import (
    OTLPTarget,
    default_exporter,
    endpoint_configured,
    resolve_target,
    spooled_exporter_names,
)

if TYPE_CHECKING:
    from otel_perf.exporters._transport import Transport

__all__ = ["OTLPProfileExporter", "ProfileExporter", "exporter_kind", "profile_exporter"]

_OTLP_NAMES = frozenset({"otlp", "otlp_proto_grpc", "otlp_proto_http"})


class ProfileExporter(Protocol):
    """What continuous profiling hands its profiles to (``retry``, where present, is set False before
    the last export, at shutdown)."""

    def export(self, request: Any, samples: int) -> bool:
        """Send (or keep) one ``ExportProfilesServiceRequest``; False when it was not accepted."""

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Deliver what was accepted for later delivery (durable mode)."""

    def shutdown(self) -> None:
        """Release connections and files."""


class OTLPProfileExporter:
    """Sends profiles over OTLP gRPC (``ProfilesService/Export``) or http/protobuf.

    Args:
        target: where and how to send (default: resolved from ``OTEL_EXPORTER_OTLP_PROFILES_*`` and
            ``OTEL_EXPORTER_OTLP_*``).
        min_backoff: seconds before the first retry of a profile the backend could not take.
    """

    def __init__(self, target: OTLPTarget | None = None, min_backoff: float = 0.5) -> None:
        # Imported here: the files and durable kinds need no HTTP or TLS stack.
        from otel_perf.exporters._transport import open_transport

        self.target = target or resolve_target("profiles")
        self._min_backoff = min_backoff
        self.retry = True  # off for the last profile, at shutdown
        self._transport: Transport = open_transport(self.target, max_backoff=5.0)

    def export(self, request: Any, samples: int) -> bool:
        from otel_perf.exporters._transport import Outcome

        payload = request.SerializeToString()
        deadline = time.monotonic() + self.target.timeout
        delay = self._min_backoff
        while True:
            result = self._transport.send(payload)
            if result.outcome is Outcome.OK:
                return True
            if result.outcome is Outcome.REJECT:
                log_once(("profiles-rejected", self.target.endpoint),
                         "otel-perf: %s rejected a profile (%s); it is dropped. Not logged again.",
                         self.target.endpoint, result.detail)
                return False
            wait = max(delay, result.retry_after or 0.0) * random.uniform(0.5, 1.0)
            if not self.retry or time.monotonic() + wait >= deadline:
                log_once(("profiles-unreachable", self.target.endpoint),
                         "otel-perf: profiles cannot be sent to %s (%s); profiles are dropped until it answers. "
                         "Not logged again.", self.target.endpoint, result.detail)
                return False
            time.sleep(wait)
            delay *= 2

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True

    def shutdown(self) -> None:
        self._transport.close()


def _trace_exporter_names(settings: Settings, environ: Mapping[str, str]) -> list[str]:
    raw = (environ.get("OTEL_TRACES_EXPORTER") or "").strip()
    names = ([name.strip() for name in raw.split(",") if name.strip()] if raw
             else [default_exporter("traces", environ, settings)])
    return spooled_exporter_names(names, settings)


def exporter_kind(settings: Settings, environ: Mapping[str, str] | None = None) -> str:
    """``otlp``, ``otlp_durable`` or ``otel_perf_file``: where profiles go (module docstring)."""
    environ = os.environ if environ is None else environ
    names = _trace_exporter_names(settings, environ)
    if "otlp_durable" in names:
        return "otlp_durable"
    if _OTLP_NAMES & set(names):
        return "otlp"
    if "otel_perf_file" in names:
        return "otel_perf_file"
    if endpoint_configured("profiles", environ):
        kind = "otlp"
    elif settings.spool_dir:
        kind = "otlp_durable"
    else:
        kind = "otel_perf_file"
    log_once(("profiles-exporter", ",".join(names), kind),
             "otel-perf: OTEL_TRACES_EXPORTER=%s names no exporter profiles can follow; continuous profiling "
             "exports profiles as %s", ",".join(names) or "(unset)",
             {"otlp": "OTLP", "otlp_durable": "durable OTLP", "otel_perf_file": "OTLP JSON lines files"}[kind],
             level=logging.INFO)
    return kind


def profile_exporter(settings: Settings, environ: Mapping[str, str] | None = None) -> ProfileExporter:
    """The exporter continuous profiling uses in this process (module docstring)."""
    environ = os.environ if environ is None else environ
    kind = exporter_kind(settings, environ)
    if kind == "otlp_durable":
        from otel_perf.exporters.durable import DurableProfileExporter

        return DurableProfileExporter(spool_dir=settings.spool_dir)
    if kind == "otlp":
        protocol = None
        raw = (environ.get("OTEL_TRACES_EXPORTER") or "")
        if "otlp_proto_http" in raw and not (environ.get("OTEL_EXPORTER_OTLP_PROFILES_PROTOCOL") or "").strip():
            protocol = "http/protobuf"  # the traces go over HTTP: so do the profiles
        return OTLPProfileExporter(resolve_target("profiles", environ, protocol=protocol))
    from otel_perf.exporters.files import FileProfileExporter

    return FileProfileExporter(settings.output_dir)
