"""What ``opentelemetry-instrument`` loads of otel-perf: a distro and a pre-instrument hook.

Why this module exists: most users add otel-perf to a program that already runs under the launcher,
often with ``opentelemetry-distro`` installed, and installing otel-perf must not change what that set-up
exports. The launcher loads one distro (``OTEL_PYTHON_DISTRO``, else the first it finds) and one
configurator (``OTEL_PYTHON_CONFIGURATOR``, else the first it finds; with two installed it warns about the
other in every process, child Pythons included), then runs the ``opentelemetry_pre_instrument`` hooks, the
instrumentors and the ``opentelemetry_post_instrument`` hooks. So otel-perf registers:

* the distro ``otel_perf``: exactly the stock distro's defaults (``otlp`` for traces, metrics and logs,
  over gRPC; ``otlp_durable`` when ``OTEL_PERF_SPOOL_DIR`` asks for durable export), so whichever of the
  two distros the launcher picks, the program exports the same. The OTLP JSON lines fallback belongs to
  ``otel-perf run`` and ``otel-perf demo``, which set the exporters explicitly
  (``otel_perf.cli.launcher_environment``);
* no configurator: ``opentelemetry-distro``'s (the SDK's own) sets the SDK up when it is installed;
* the pre-instrument hook ``otel_perf`` (:func:`pre_instrument`), which runs after whichever configurator
  and before the instrumentors: when no configurator was loaded it sets the SDK up from the environment
  as the SDK's configurator would (``otel_perf._sdk.configure_sdk_from_environment``), then it runs
  otel-perf's process start-up (settings, root marker, the parent's ``TRACEPARENT``, root-only services
  such as the debug server);
* the post-instrument hook ``otel_perf`` (:func:`post_instrument`): the launcher's instrumentors are all
  loaded (the runtime metrics then know for sure whether contrib's system-metrics reports beside them).

Nothing here may raise into the launcher: an exception would abort the auto-instrumentation of the
user's whole program, so every step is guarded and logged once.
"""

from __future__ import annotations

import os
from typing import Any

from opentelemetry.instrumentation.distro import BaseDistro  # type: ignore[attr-defined]

from otel_perf._config import get_settings
from otel_perf._safety import guarded

__all__ = ["STOCK_DEFAULTS", "OtelPerfDistro", "post_instrument", "pre_instrument"]

#: The variables ``opentelemetry-distro`` defaults, with its values (its ``OpenTelemetryDistro``).
STOCK_DEFAULTS = {
    "OTEL_TRACES_EXPORTER": "otlp",
    "OTEL_METRICS_EXPORTER": "otlp",
    "OTEL_LOGS_EXPORTER": "otlp",
    "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
}


class OtelPerfDistro(BaseDistro):  # type: ignore[misc]
    """The stock distro's exporter defaults: installing otel-perf never changes what a set-up exports.

    The one addition is opt-in: with ``OTEL_PERF_SPOOL_DIR`` set (durable export asked for), the default
    for each signal is ``otlp_durable``, OTLP through the on-disk spool.
    """

    def _configure(self, **kwargs: Any) -> None:
        with guarded("OtelPerfDistro.configure"):
            for variable, value in STOCK_DEFAULTS.items():
                os.environ.setdefault(variable, value)
            settings = get_settings()
            if settings.enabled and settings.spool_dir:
                from otel_perf.exporters.otlp import apply_spool_choice

                # `otlp` (the default or set explicitly, as the Operator does) spools; an unusable directory
                # means plain OTLP, warned once, naming OTEL_PERF_SPOOL_DIR.
                apply_spool_choice(os.environ, settings)


def pre_instrument() -> None:
    """The launcher's ``opentelemetry_pre_instrument`` hook: the SDK when no configurator set it up, then
    otel-perf's process start-up. Runs under any distro and configurator."""
    with guarded("otel-perf start-up under the launcher"):
        from otel_perf._sdk import (
            configurator_loaded,
            configure_sdk_from_environment,
            process_startup,
            sdk_providers_set,
        )

        settings = get_settings()
        if not settings.enabled:
            return
        # Providers set mean a configurator ran: no need to scan the installed configurators to know it.
        if not sdk_providers_set() and not configurator_loaded():
            configure_sdk_from_environment(settings)
        process_startup(settings)
    with guarded("otel-perf start-up under the launcher: system-metrics"):
        from otel_perf.instrumentations._runtime_system_metrics import launcher_starting

        launcher_starting()


def post_instrument() -> None:
    """The launcher's ``opentelemetry_post_instrument`` hook: every instrumentor is loaded."""
    with guarded("otel-perf after the launcher's instrumentors"):
        from otel_perf.instrumentations._runtime_system_metrics import launcher_done

        launcher_done()
