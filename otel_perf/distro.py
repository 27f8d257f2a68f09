"""The distro and configurator ``opentelemetry-instrument`` loads (entry points named ``otel_perf``).

Why this module exists: the launcher loads exactly one distro and one configurator, the ones named by
``OTEL_PYTHON_DISTRO``/``OTEL_PYTHON_CONFIGURATOR`` or else whichever it finds first; ``otel-perf run``
sets both to ``otel_perf``. The distro ``setdefault``s the exporters (otherwise the SDK configures none):
OTLP when an endpoint is configured, durable OTLP when ``OTEL_PERF_SPOOL_DIR`` is set, else OTLP JSON
lines files. The configurator is the SDK's own (``_OTelSDKConfigurator``) followed by otel-perf's
process start-up (settings, root marker, the parent's ``TRACEPARENT``, root-only services).

Nothing here may raise into the launcher: an exception would abort the auto-instrumentation of the
user's whole program, so every step is guarded and logged once.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from opentelemetry.instrumentation.distro import BaseDistro  # type: ignore[attr-defined]
from opentelemetry.sdk._configuration import _OTelSDKConfigurator

from otel_perf._config import get_settings, load_settings
from otel_perf._safety import guarded, raise_internal_errors
from otel_perf._sdk import default_exporter, process_startup
from otel_perf.exporters.otlp import apply_spool_choice

__all__ = ["OtelPerfConfigurator", "OtelPerfDistro"]

_logger = logging.getLogger("otel_perf")


class OtelPerfDistro(BaseDistro):  # type: ignore[misc]
    """Sets otel-perf's exporter defaults before the configurator runs."""

    def _configure(self, **kwargs: Any) -> None:
        with guarded("OtelPerfDistro.configure"):
            settings = load_settings()
            if not settings.enabled:
                return
            for signal in ("traces", "metrics", "logs"):
                os.environ.setdefault(f"OTEL_{signal.upper()}_EXPORTER",
                                      default_exporter(signal, settings=settings))
            os.environ.setdefault("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
            apply_spool_choice(os.environ, settings)  # OTEL_PERF_SPOOL_DIR: `otlp` spools


class OtelPerfConfigurator(_OTelSDKConfigurator):
    """The SDK's environment-driven set-up, then otel-perf's process start-up."""

    def _configure(self, **kwargs: Any) -> None:
        with guarded("otel-perf exporter choice"):
            if get_settings().enabled:
                apply_spool_choice(os.environ, get_settings())  # also when another distro ran
        try:
            super()._configure(**kwargs)  # type: ignore[no-untyped-call]
        except Exception:
            if raise_internal_errors():
                raise
            _logger.warning(
                "otel-perf: the OpenTelemetry SDK could not be set up from the environment; the program "
                "runs uninstrumented for the signals that failed. Check OTEL_*_EXPORTER and "
                "OTEL_EXPORTER_OTLP_* (otel-perf doctor shows them).", exc_info=True,
            )
        with guarded("otel-perf process start-up"):
            settings = get_settings()
            if settings.enabled:
                process_startup(settings)
