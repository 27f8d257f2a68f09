"""``configure()``: resource, providers, processors, readers, exporters, then the instrumentations.

Why this module exists: both ways in (``otel_perf.configure()`` and the launcher's configurator) need the
same start-up: settings, the exporters otel-perf defaults to, the process-tree rules of DESIGN.md
("Processes": root marker, one output file per process and signal, root-only services) and the
``TRACEPARENT`` hand-over from an instrumented parent. This module is that start-up, once. It is the
set-up layer (docs/architecture.md): it writes what the instrumentations need into ``otel_perf._process``
(the process role, the active handle, the worker bootstrap), where they read it without importing this
module. Traces, metrics and logs are set up by one path, :func:`_set_up_signal`, driven by the table
``_SIGNAL_SET_UPS``.

Global OpenTelemetry providers cannot be replaced once set: when the user (or an earlier ``configure()``)
already set SDK providers, otel-perf reuses them and adds only the exporters the environment names
explicitly (``OTEL_TRACES_EXPORTER`` and friends), so a user's own pipeline is never doubled.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry._logs import get_logger_provider, set_logger_provider
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from otel_perf import _process
from otel_perf._config import Settings, load_settings, set_settings
from otel_perf._process import ROOT_MARKER, current_handle, is_root_process, mark_root
from otel_perf._safety import guarded, log_once, raise_internal_errors
from otel_perf._sdk_internals import check_at_startup, exporter_name_resolver, sdk_configurator
from otel_perf.exporters.lazy import STANDARD_OTLP_NAMES, lazy_exporter
from otel_perf.exporters.otlp import default_exporter, spooled_exporter_names

__all__ = [
    "ROOT_MARKER",
    "ConfigSnapshot",
    "Handle",
    "attach_environment_context",
    "configurator_loaded",
    "configure",
    "configure_sdk_from_environment",
    "current_handle",
    "default_exporter",
    "is_root_process",
    "sdk_providers_set",
    "shutdown",
]

_logger = logging.getLogger("otel_perf")

_SIGNALS = ("traces", "metrics", "logs")
_EXPORTER_ENV = {s: f"OTEL_{s.upper()}_EXPORTER" for s in _SIGNALS}
_ENTRY_POINT_GROUP = {s: f"opentelemetry_{s}_exporter" for s in _SIGNALS}


def extract_environment_context(env: Mapping[str, str] | None = None) -> otel_context.Context | None:
    """The context an instrumented parent handed over in ``TRACEPARENT``/``TRACESTATE``/``BAGGAGE``."""
    environ = os.environ if env is None else env
    carrier = {key.lower(): environ[key] for key in ("TRACEPARENT", "TRACESTATE", "BAGGAGE") if environ.get(key)}
    if "traceparent" not in carrier:
        return None
    # Imported here: the propagators (an entry-point scan of OTEL_PROPAGATORS) matter only to a child that
    # was handed a trace.
    from opentelemetry import propagate

    return propagate.extract(carrier)


_attached_environment_context = False


def attach_environment_context() -> bool:
    """Attach the parent's context in the main thread, once, so the program continues its trace."""
    global _attached_environment_context
    if _attached_environment_context or threading.current_thread() is not threading.main_thread():
        return False
    ctx = extract_environment_context()
    if ctx is None or not trace.get_current_span(ctx).get_span_context().is_valid:
        return False
    otel_context.attach(ctx)
    _attached_environment_context = True
    return True


def _exporter_names(signal: str, explicit_only: bool, settings: Settings) -> list[str]:
    raw = (os.environ.get(_EXPORTER_ENV[signal]) or "").strip()
    if not raw:
        names = [] if explicit_only else [default_exporter(signal, settings=settings)]
    elif raw.lower() == "none":
        return []
    else:
        names = [name.strip() for name in raw.split(",") if name.strip()]
    # OTEL_PERF_SPOOL_DIR: `otlp` spools; an unusable directory means plain OTLP (warned once).
    return spooled_exporter_names(names, settings)


#: otel-perf's own exporters: its ``opentelemetry_<signal>_exporter`` entry points in pyproject.toml
#: (tests/test_sdk.py checks the two agree), (signal, name) -> (module, class).
OWN_EXPORTERS = {
    (signal, name): (module, f"{prefix}{kind}Exporter")
    for signal, kind in (("traces", "Span"), ("metrics", "Metric"), ("logs", "Log"))
    for name, module, prefix in (("otel_perf_file", "otel_perf.exporters.files", "File"),
                                 ("otlp_durable", "otel_perf.exporters.durable", "Durable"),
                                 ("otel_perf_otlp", "otel_perf.exporters.lazy", "LazyOTLP"))
}


def _exporter_factories(signal: str, names: list[str]) -> list[Callable[[], Any]]:
    """What makes each named exporter (or metric reader). The standard OTLP exporters are made lazy
    (``exporters/lazy.py``): their entry point is looked up and their modules, gRPC or ``requests`` load
    on the first export, in the export thread, so start-up does not wait for them; any other exporter is
    loaded now, as the SDK does."""
    factories: list[Callable[[], Any]] = []
    for name in names:
        if name in STANDARD_OTLP_NAMES:
            factories.append(functools.partial(lazy_exporter, signal, name))
            continue
        own = OWN_EXPORTERS.get((signal, name))
        if own is not None:  # otel-perf's own: no scan of every installed package's entry points
            factories.append(getattr(importlib.import_module(own[0]), own[1]))
            continue
        from importlib.metadata import entry_points

        resolved = exporter_name_resolver()(name, signal)
        found = list(entry_points(group=_ENTRY_POINT_GROUP[signal], name=resolved))
        if not found:
            log_once(("exporter-missing", signal, name),
                     "otel-perf: no %s exporter named %r is installed (from %s); %s are not exported there",
                     signal, name, _EXPORTER_ENV[signal], signal)
            continue
        factories.append(found[0].load())
    return factories


@dataclass(frozen=True)
class ConfigSnapshot:
    """What a worker process needs to configure itself like its parent; it pickles.

    A ``configure()``d parent's spawn workers never run its ``configure()`` call, so pool instrumentation
    ships this snapshot to them (DESIGN.md, "Processes").
    """

    settings: Settings
    service_name: str | None
    resource_attributes: Mapping[str, Any]
    environment: Mapping[str, str]


@dataclass
class Handle:
    """What ``configure()`` set up. ``shutdown()`` flushes everything and uninstruments."""

    settings: Settings
    tracer_provider: Any = None
    meter_provider: Any = None
    logger_provider: Any = None
    service_name: str | None = None
    instrumentors: list[Any] = field(default_factory=list)
    owned: list[Any] = field(default_factory=list)  # the providers configure() created (and shuts down)
    _stopped: bool = False

    def snapshot(self) -> ConfigSnapshot:
        resource = getattr(self.tracer_provider, "resource", None)
        attributes = dict(resource.attributes) if resource is not None else {}
        relevant = {k: v for k, v in os.environ.items()
                    if k.startswith(("OTEL_", "TRACEPARENT", "TRACESTATE", "BAGGAGE"))}
        return ConfigSnapshot(self.settings, self.service_name, attributes, relevant)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        ok = True
        for provider in (self.tracer_provider, self.meter_provider, self.logger_provider):
            flush = getattr(provider, "force_flush", None)
            if flush is not None:
                with guarded("force_flush"):
                    ok = bool(flush(timeout_millis)) and ok
        return ok

    def shutdown(self) -> None:
        """Publish and export everything recorded, then uninstrument and shut down what otel-perf made.

        The order matters: the metric provider's last collection runs while every instrumentation is
        still on, so the aggregated histograms are still bound and the observable instruments still
        report (an exit through ``atexit`` exports the same metrics). Only then are the instrumentations
        removed, and the tracer and logger providers flushed and shut down. Providers the user made are
        flushed, never shut down: they stay the user's.
        """
        if self._stopped:
            return
        self._stopped = True
        self._finish(self.meter_provider)
        for instrumentor in reversed(self.instrumentors):
            with guarded(f"uninstrument {type(instrumentor).__name__}"):
                instrumentor.uninstrument()
        self.instrumentors.clear()
        _run_shutdown_hooks()
        self._finish(self.tracer_provider)
        self._finish(self.logger_provider)
        with _lock:
            if current_handle() is self:
                _process.set_current_handle(None)

    def _finish(self, provider: Any) -> None:
        if provider is None:
            return
        # Ours are shut down (which flushes); the user's are only flushed: they stay the user's.
        action = "shutdown" if any(provider is p for p in self.owned) else "force_flush"
        with guarded(f"provider {action}"):
            getattr(provider, action)()


_lock = threading.RLock()

#: Feature modules with a ``_startup(settings, is_root)`` function, run at process start-up by both ways in
#: (a module that is not installed or has no such function is skipped), and optionally a ``_shutdown()``
#: function, run by ``Handle.shutdown()`` when the module was imported. Each is imported only when its
#: feature is asked for (the predicate): every instrumented Python, child Pythons included, pays for the
#: import of what it loads, and the profiler, the debug server and the spool cost tens of milliseconds.
_STARTUP_MODULES: tuple[tuple[str, Callable[[Settings, bool], bool]], ...] = (
    ("otel_perf.profiling.server",  # the debug server and tracemalloc, root process only
     lambda settings, root: root and (bool(settings.debug_addr) or settings.tracemalloc > 0)),
    ("otel_perf.exporters.durable", lambda settings, root: bool(settings.spool_dir)),
    ("otel_perf.profiling", lambda settings, root: settings.profiling != "off"),  # continuous profiling
)


def _run_startup_hooks(settings: Settings) -> None:
    root = is_root_process()
    hooks = []
    for module_name, wanted in _STARTUP_MODULES:
        if not wanted(settings, root):
            continue
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        hook = getattr(module, "_startup", None)
        if hook is not None:
            hooks.append(hook)
    for hook in hooks:
        with guarded(f"startup hook {hook!r}"):
            hook(settings, root)


def _run_shutdown_hooks() -> None:
    """Each imported feature module's ``_shutdown()`` (a module never imported has nothing to stop)."""
    for module_name, _ in _STARTUP_MODULES:
        module = sys.modules.get(module_name)
        hook = getattr(module, "_shutdown", None) if module is not None else None
        if hook is not None:
            with guarded(f"shutdown hook of {module_name}"):
                hook()


def process_startup(settings: Settings) -> None:
    """Start-up shared by both ways in: settings, root marker, parent's trace, process services."""
    set_settings(settings)
    mark_root()
    attach_environment_context()
    check_at_startup()  # the SDK internals otel-perf uses, checked now rather than at exit
    _watch_batch_queues()
    if settings.profiling != "off":  # the profiling feature exports through the exporters feature
        from otel_perf.exporters.profiles import profile_exporter
        from otel_perf.profiling import continuous

        continuous.set_exporter_factory(profile_exporter)
    _run_startup_hooks(settings)


def _watch_batch_queues(*providers: Any) -> None:
    """Count what the SDK's batch processors drop on a full queue (``otel_perf.exporter.dropped``): those of
    the global providers at start-up, then those of the providers ``configure()`` uses (and its meter)."""
    from otel_perf.exporters._batch_drops import watch_batch_queues

    watch_batch_queues(*providers)


def configurator_loaded(env: Mapping[str, str] | None = None) -> bool:
    """Whether ``opentelemetry-instrument`` loaded a configurator, by its own rule: the one
    ``OTEL_PYTHON_CONFIGURATOR`` names if it is installed, else (unset) the first one installed."""
    environ = os.environ if env is None else env
    from importlib.metadata import entry_points

    selected = environ.get("OTEL_PYTHON_CONFIGURATOR")
    names = {ep.name for ep in entry_points(group="opentelemetry_configurator")}
    return bool(names) if selected is None else selected in names


def sdk_providers_set() -> bool:
    """Whether SDK providers are already the global ones (a configurator or the program set them)."""
    return any(isinstance(signal.get_global(), signal.provider_type) for signal in _SIGNAL_SET_UPS)


def configure_sdk_from_environment(settings: Settings) -> None:
    """Set the SDK up from the ``OTEL_*`` environment as the SDK's configurator does: under the launcher
    when no configurator is installed (or ``OTEL_PYTHON_CONFIGURATOR`` names none that is). Providers a
    distro already set stay as they are. A failure is logged; the program runs on."""
    if sdk_providers_set():
        return
    configurator = sdk_configurator()
    if configurator is None:
        resource = _make_resource(None)
        for signal in _SIGNAL_SET_UPS:
            _set_up_signal(signal, resource, settings, None)
        return
    from opentelemetry.instrumentation.version import __version__ as instrumentation_version

    try:
        configurator().configure(auto_instrumentation_version=instrumentation_version)
    except Exception:
        if raise_internal_errors():
            raise
        _logger.warning(
            "otel-perf: the OpenTelemetry SDK could not be set up from the environment; the program "
            "runs uninstrumented for the signals that failed. Check OTEL_*_EXPORTER and "
            "OTEL_EXPORTER_OTLP_* (otel-perf doctor shows them).", exc_info=True,
        )


def _make_resource(service_name: str | None) -> Resource:
    attributes: dict[str, Any] = {}
    if service_name:
        attributes[SERVICE_NAME] = service_name
    return Resource.create(attributes)


def _metric_reader(make: Callable[[], Any]) -> MetricReader:
    instance: Any = make()
    if isinstance(instance, MetricReader):
        return instance
    return PeriodicExportingMetricReader(instance)


class _SignalSetUp(NamedTuple):
    """How one signal's provider is found, made and fed its exporters: the one thing that differs
    between traces, metrics and logs in :func:`_set_up_signal`."""

    signal: str
    handle_field: str  # the Handle attribute that holds the provider
    provider_type: type
    get_global: Callable[[], Any]
    set_global: Callable[[Any], None]
    add_exporter: Callable[[Any, Callable[[], Any]], None]  # feed an exporter to an existing provider
    make: Callable[[Resource, list[Callable[[], Any]]], Any]  # a new provider fed these exporters


def _add_metric_exporter(provider: MeterProvider, make: Callable[[], Any]) -> None:
    add = getattr(provider, "add_metric_reader", None)  # MeterProvider.add_metric_reader: SDK 1.43+
    if add is None:
        log_once("metric-reader-add",
                 "otel-perf: this OpenTelemetry SDK cannot add a metric reader to a MeterProvider already made; "
                 "metrics go to the readers it was made with, not to OTEL_METRICS_EXPORTER")
        return
    add(_metric_reader(make))


def _new_tracer_provider(resource: Resource, factories: list[Callable[[], Any]]) -> TracerProvider:
    provider = TracerProvider(resource=resource)
    for make in factories:
        provider.add_span_processor(BatchSpanProcessor(make()))
    return provider


def _new_logger_provider(resource: Resource, factories: list[Callable[[], Any]]) -> LoggerProvider:
    provider = LoggerProvider(resource=resource)
    for make in factories:
        provider.add_log_record_processor(BatchLogRecordProcessor(make()))
    return provider


_SIGNAL_SET_UPS = (
    _SignalSetUp(
        "traces", "tracer_provider", TracerProvider, trace.get_tracer_provider, trace.set_tracer_provider,
        lambda provider, make: provider.add_span_processor(BatchSpanProcessor(make())),
        _new_tracer_provider,
    ),
    _SignalSetUp(
        "metrics", "meter_provider", MeterProvider, metrics.get_meter_provider, metrics.set_meter_provider,
        lambda provider, make: _add_metric_exporter(provider, make),
        lambda resource, factories: MeterProvider(resource=resource,
                                                  metric_readers=[_metric_reader(make) for make in factories]),
    ),
    _SignalSetUp(
        "logs", "logger_provider", LoggerProvider, get_logger_provider, set_logger_provider,
        lambda provider, make: provider.add_log_record_processor(BatchLogRecordProcessor(make())),
        _new_logger_provider,
    ),
)


def _set_up_signal(signal: _SignalSetUp, resource: Resource, settings: Settings, given: Any) -> tuple[Any, bool]:
    """The provider of one signal, and whether ``configure()`` made it (and so shuts it down).

    A provider the caller gave is used as it is. A global SDK provider that is already set (by the user,
    a distro or an earlier ``configure()``) is kept and fed only the exporters the environment names
    explicitly, so a user's own pipeline is never doubled. Otherwise a new provider gets the exporters
    the environment names, or otel-perf's default, and becomes the global one.
    """
    if given is not None:
        return given, False
    existing = signal.get_global()
    if isinstance(existing, signal.provider_type):
        for make in _exporter_factories(signal.signal, _exporter_names(signal.signal, True, settings)):
            signal.add_exporter(existing, make)
        return existing, False
    factories = _exporter_factories(signal.signal, _exporter_names(signal.signal, False, settings))
    provider = signal.make(resource, factories)
    signal.set_global(provider)
    return provider, True


#: otel-perf's instrumentors: the ``opentelemetry_instrumentor`` entry points of pyproject.toml (the launcher
#: finds them there; tests/test_sdk.py checks the two agree). ``configure()`` reads this table instead of
#: scanning every installed distribution's entry points, a cost of every Python that calls it.
INSTRUMENTORS = {
    "otel_perf_memory": ("otel_perf.instrumentations.memory", "MemoryInstrumentor"),
    "otel_perf_parsers": ("otel_perf.instrumentations.parsers", "ParserInstrumentor"),
    "otel_perf_runtime": ("otel_perf.instrumentations.runtime", "RuntimeInstrumentor"),
    "otel_perf_subprocess": ("otel_perf.instrumentations.subprocess", "SubprocessInstrumentor"),
    "otel_perf_tools": ("otel_perf.instrumentations.tools", "ToolInstrumentor"),
    "otel_perf_workers": ("otel_perf.instrumentations.workers", "WorkerPoolInstrumentor"),
}


def load_instrumentors() -> list[tuple[str, Any]]:
    """otel-perf's instrumentors, minus those in ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS``."""
    disabled = {x.strip() for x in os.environ.get("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "").split(",")}
    if "*" in disabled:
        return []
    found = []
    for name, (module_name, class_name) in sorted(INSTRUMENTORS.items()):
        if name in disabled:
            continue
        with guarded(f"loading instrumentor {name}"):
            found.append((name, getattr(importlib.import_module(module_name), class_name)()))
    return found


def configure(
    service_name: str | None = None,
    *,
    tracer_provider: Any = None,
    meter_provider: Any = None,
    logger_provider: Any = None,
    instrument: bool = True,
    **settings: Any,
) -> Handle:
    """Set up OpenTelemetry (when not already set up) and every enabled otel-perf instrumentation.

    Args:
        service_name: ``service.name`` of the resource (default: ``OTEL_SERVICE_NAME``, else the SDK's).
        tracer_provider: use this provider instead of the global one.
        meter_provider: use this provider instead of the global one.
        logger_provider: use this provider instead of the global one.
        instrument: also instrument (pools, tools, subprocesses, parsers, runtime, memory).
        **settings: any setting of the configuration reference by its name, overriding its
            ``OTEL_PERF_*`` variable, e.g. ``memory_threshold=0.9`` or ``pool_spans=False``.

    Returns:
        A :class:`Handle`; ``handle.shutdown()`` (or :func:`otel_perf.shutdown`) flushes and uninstruments.

    Raises:
        ConfigError: an argument is invalid. Nothing else is raised: internal faults are logged once.
    """
    effective = load_settings(**settings)  # raises ConfigError for bad arguments, before any change
    given = {"traces": tracer_provider, "metrics": meter_provider, "logs": logger_provider}
    with _lock:
        active: Handle | None = current_handle()
        if active is not None:
            # A second configure() is harmless: the global providers stay; new settings apply to
            # instrumentations started from now on.
            set_settings(effective)
            return active
        handle = Handle(settings=effective, service_name=service_name)
        if not effective.enabled:
            set_settings(effective)
            _process.set_current_handle(handle)
            return handle
        with guarded("configure"):
            set_settings(effective)  # the exporters made below read them (configure(spool_dir=...))
            resource = _make_resource(service_name)
            for signal in _SIGNAL_SET_UPS:
                provider, owns = _set_up_signal(signal, resource, effective, given[signal.signal])
                setattr(handle, signal.handle_field, provider)
                if owns:
                    handle.owned.append(provider)
            process_startup(effective)
            _watch_batch_queues(handle.tracer_provider, handle.logger_provider, handle.meter_provider)
            if instrument:
                for name, instrumentor in load_instrumentors():
                    if instrumentor.is_instrumented_by_opentelemetry:
                        continue
                    with guarded(f"instrument {name}"):
                        instrumentor.instrument(
                            tracer_provider=handle.tracer_provider,
                            meter_provider=handle.meter_provider,
                            settings=effective,
                        )
                        handle.instrumentors.append(instrumentor)
        _process.set_current_handle(handle)
        return handle


def configure_from_snapshot(snapshot: ConfigSnapshot) -> Handle:
    """Configure a worker process like its parent (spawn/forkserver pool workers)."""
    for key, value in snapshot.environment.items():
        os.environ.setdefault(key, value)
    arguments = {name: getattr(snapshot.settings, name) for name in snapshot.settings.sources
                 if snapshot.settings.sources.get(name) == "argument"}
    return configure(snapshot.service_name, **arguments)


# A worker process of a configure()d parent unpickles its snapshot, which imports this module: from then on
# the instrumentations below reach configure_from_snapshot through this hook, never by importing this module.
_process.set_worker_bootstrap(configure_from_snapshot)


def shutdown() -> None:
    """Flush and uninstrument what :func:`configure` set up (no-op when nothing was)."""
    handle: Handle | None = current_handle()
    if handle is not None:
        handle.shutdown()
