"""otel-perf's instrumentors, and the small base they share.

Each instrumentation module defines one ``XInstrumentor`` (a contrib-style instrumentor, registered as an
``opentelemetry_instrumentor`` entry point). :class:`PerfInstrumentor` adds what all of them need:
settings (``configure()`` arguments or the environment), a tracer and a meter under otel-perf's scope, the
master switch, and the guard: a fault while instrumenting is logged once, rolled back, and never raised
into the launcher (which would otherwise skip every instrumentor after ours).

Why :class:`PerfInstrumentor` does not inherit opentelemetry-instrumentation's ``BaseInstrumentor``:
importing that module imports ``packaging`` (its dependency checks, which otel-perf's instrumentors never
need: they instrument the standard library and name no package), the semantic-convention opt-in machinery
of contrib's HTTP and database instrumentations, and what those import: about 40 ms of every
``configure()`` here (``benchmarks/test_startup.py``, group ``startup.configure``; issue 20 gives it
20 ms). The launcher loads an instrumentor by calling ``instrument()`` on an instance, which this class
provides with ``BaseInstrumentor``'s behaviour (one instance per class, the ``is_instrumented_by_opentelemetry``
flag, the same warnings, ``skip_dep_check`` and ``raise_exception_on_conflict`` accepted). It is registered
as a virtual subclass of ``BaseInstrumentor`` as soon as that module is imported (always, under the
launcher), so ``isinstance(instrumentor, BaseInstrumentor)`` holds wherever a program can ask it.
"""

from __future__ import annotations

import logging
import sys
from abc import ABC, abstractmethod
from collections.abc import Collection
from typing import Any

import wrapt
from opentelemetry.metrics import Meter, MeterProvider, get_meter
from opentelemetry.trace import Tracer, TracerProvider, get_tracer

from otel_perf._config import Settings, get_settings
from otel_perf._safety import guard, guarded, raise_internal_errors
from otel_perf._semconv import INSTRUMENTATION_SCOPE, SCHEMA_URL
from otel_perf.version import __version__

__all__ = ["PerfInstrumentor"]

_logger = logging.getLogger("otel_perf")


_BASE_MODULE = "opentelemetry.instrumentation.instrumentor"


class PerfInstrumentor(ABC):
    """Base of otel-perf's instrumentors: ``BaseInstrumentor``'s protocol (module docstring).

    Subclasses implement :meth:`_start` and :meth:`_stop`. ``instrument()`` accepts the contrib keywords
    ``tracer_provider=`` and ``meter_provider=``, plus ``settings=`` (a :class:`~otel_perf._config.Settings`;
    default: the settings in force).
    """

    _instance: Any = None
    _is_instrumented_by_opentelemetry = False
    tracer: Tracer
    meter: Meter
    settings: Settings

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        # One instance per class, as BaseInstrumentor: instrument() and uninstrument() called on
        # instances made at different places (the launcher, configure(), the user) act on one state.
        if cls.__dict__.get("_instance") is None:
            cls._instance = object.__new__(cls)
        return cls._instance

    @property
    def is_instrumented_by_opentelemetry(self) -> bool:
        return self._is_instrumented_by_opentelemetry

    def instrumentation_dependencies(self) -> Collection[str]:
        """No package requirement: otel-perf instruments the standard library (and what it is told to)."""
        return ()

    def instrument(self, **kwargs: Any) -> None:
        """Instrument (``BaseInstrumentor.instrument``); a second call warns and does nothing."""
        if self._is_instrumented_by_opentelemetry:
            _base_logger.warning("Attempting to instrument while already instrumented")
            return
        # The launcher's keywords for dependency checks: there are no dependencies to check.
        kwargs.pop("skip_dep_check", None)
        kwargs.pop("raise_exception_on_conflict", None)
        self._instrument(**kwargs)
        self._is_instrumented_by_opentelemetry = True

    def uninstrument(self, **kwargs: Any) -> None:
        """Restore what :meth:`instrument` changed (``BaseInstrumentor.uninstrument``)."""
        if not self._is_instrumented_by_opentelemetry:
            _base_logger.warning("Attempting to uninstrument while already uninstrumented")
            return
        self._uninstrument(**kwargs)
        self._is_instrumented_by_opentelemetry = False

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


#: BaseInstrumentor's own logger: its warnings come out where a program's logging set-up expects them.
_base_logger = logging.getLogger(_BASE_MODULE)


@guard
def _register_as_base_instrumentor(module: Any) -> None:
    # Guarded: this runs inside the import of the program's own `from opentelemetry.instrumentation...`,
    # which a surprise here must not fail.
    module.BaseInstrumentor.register(PerfInstrumentor)


if _BASE_MODULE in sys.modules:
    _register_as_base_instrumentor(sys.modules[_BASE_MODULE])
else:
    # otel_perf._patching imports wrapt for its post-import hooks: no import cost here.
    wrapt.register_post_import_hook(_register_as_base_instrumentor, _BASE_MODULE)
