"""otel-perf's instrumentors, and the small base they share.

Each instrumentation module defines one ``XInstrumentor`` (a contrib-style ``BaseInstrumentor``, registered
as an ``opentelemetry_instrumentor`` entry point). :class:`PerfInstrumentor` adds what all of them need:
settings (``configure()`` arguments or the environment), a tracer and a meter under otel-perf's scope, the
master switch, and the guard: a fault while instrumenting is logged once, rolled back, and never raised
into the launcher (which would otherwise skip every instrumentor after ours).
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from collections.abc import Collection
from typing import Any

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]
from opentelemetry.metrics import Meter, MeterProvider, get_meter
from opentelemetry.trace import Tracer, TracerProvider, get_tracer

from otel_perf._config import Settings, get_settings
from otel_perf._safety import guarded, raise_internal_errors
from otel_perf._semconv import INSTRUMENTATION_SCOPE, SCHEMA_URL
from otel_perf.version import __version__

__all__ = ["PerfInstrumentor"]

_logger = logging.getLogger("otel_perf")


class PerfInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Base of otel-perf's instrumentors.

    Subclasses implement :meth:`_start` and :meth:`_stop`. ``instrument()`` accepts the contrib keywords
    ``tracer_provider=`` and ``meter_provider=``, plus ``settings=`` (a :class:`~otel_perf._config.Settings`;
    default: the settings in force).
    """

    _instruments: Collection[str] = ()
    tracer: Tracer
    meter: Meter
    settings: Settings

    def instrumentation_dependencies(self) -> Collection[str]:
        return self._instruments

    def _instrument(self, **kwargs: Any) -> None:
        settings: Settings = kwargs.get("settings") or get_settings()
        self.settings = settings
        if not settings.enabled:
            return
        tracer_provider: TracerProvider | None = kwargs.get("tracer_provider")
        meter_provider: MeterProvider | None = kwargs.get("meter_provider")
        self.tracer = get_tracer(INSTRUMENTATION_SCOPE, __version__, tracer_provider, schema_url=SCHEMA_URL)
        self.meter = get_meter(INSTRUMENTATION_SCOPE, __version__, meter_provider, schema_url=SCHEMA_URL)
        try:
            self._start(**kwargs)
        except Exception:
            if raise_internal_errors():
                raise
            _logger.warning("otel-perf: %s failed to instrument; it stays off", type(self).__name__,
                            exc_info=True)
            with guarded(f"{type(self).__name__} rollback"):
                self._stop()

    def _uninstrument(self, **kwargs: Any) -> None:
        if not getattr(self, "settings", None) or not self.settings.enabled:
            return
        with guarded(f"{type(self).__name__}._stop"):
            self._stop()

    @abstractmethod
    def _start(self, **kwargs: Any) -> None:
        """Patch and create instruments. Runs once per instrument()."""

    @abstractmethod
    def _stop(self) -> None:
        """Undo everything _start did (also after a partial _start)."""
