"""Continuous profiling: the whole process sampled all the time, one OTLP profile per interval.

Why this module exists: a profile taken on request (``/debug/pprof/profile``) shows where the time goes
now; to know where a slow span spent its CPU an hour ago, the profile must have been taken then. With
``OTEL_PERF_PROFILING=cpu`` (or ``wall``) every process of the program samples itself at
``OTEL_PERF_PROFILING_HZ`` and exports one profile per ``OTEL_PERF_PROFILING_INTERVAL`` seconds through the
OTLP profiles signal (:mod:`otel_perf.profiling.otlp`, :mod:`otel_perf.exporters.profiles`), with the
resource of the other signals plus its own ``process.pid``. Samples taken in a span link to it
(:mod:`otel_perf.profiling.spans`, installed with the profiler).

Lifecycle:

* :func:`start` (from process start-up, both ways in) starts a sampler thread and an export thread in
  this process; it is a no-op when profiling is off or the installed ``opentelemetry-proto`` cannot carry
  the profiles written (one log line says why; the pprof endpoints keep working).
* Every interval the export thread takes the sampler's window (the sampler keeps sampling into a new
  one), encodes it and hands it to the exporter. A window without samples is not exported.
* A shutdown exports the last partial window: ``otel_perf.shutdown()``/``Handle.shutdown()`` (a shutdown
  hook), the interpreter's exit (``atexit``: the launcher's way), and a ``multiprocessing`` worker's exit
  (a finalizer, which also runs when the worker leaves by ``os._exit``).
* A forked child starts its own profiler (the parent's threads do not survive fork; what the parent
  sampled stays the parent's), so pool workers and forked servers profile themselves under their own pid.

The sampler and export threads are excluded from sampling; nothing here prints: faults are logged once on
the ``otel_perf`` logger.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from otel_perf._config import Settings
from otel_perf._safety import log_once, raise_internal_errors
from otel_perf.profiling import otlp
from otel_perf.profiling import spans as span_tracking
from otel_perf.profiling.sampler import Sampler
from otel_perf.profiling.snapshot import Snapshot

__all__ = ["ContinuousProfiler", "current", "start", "stop"]

logger = logging.getLogger("otel_perf")

#: Seconds a shutdown waits for the sampler to hand over its last window.
_HAND_OVER_TIMEOUT = 2.0


def _resource() -> tuple[dict[str, Any], str]:
    """The attributes and schema URL of the resource the other signals use (the tracer provider's)."""
    from opentelemetry import trace

    resource = getattr(trace.get_tracer_provider(), "resource", None)
    if resource is None:
        from opentelemetry.sdk.resources import Resource

        resource = Resource.create()
    return dict(resource.attributes), str(getattr(resource, "schema_url", "") or "")


class ContinuousProfiler:
    """Samples this process and exports one OTLP profile per interval.

    Usage::

        profiler = ContinuousProfiler("cpu", hz=100, interval=60, exporter=exporter)
        profiler.start()
        ...
        profiler.shutdown()        # exports the last partial interval

    Args:
        mode: ``cpu`` or ``wall`` (see :class:`~otel_perf.profiling.sampler.Sampler`).
        hz: samples per second.
        interval: seconds per exported profile.
        exporter: a :class:`~otel_perf.exporters.profiles.ProfileExporter`.
        resource: resource attributes (default: the tracer provider's); ``process.pid`` is this process's.
    """

    def __init__(self, mode: str, hz: float, interval: float, exporter: Any,
                 resource: tuple[dict[str, Any], str] | None = None) -> None:
        self.mode = mode
        self.hz = hz
        self.interval = interval
        self.exporter = exporter
        self._resource = resource
        self.exported = 0  # profiles handed to the exporter and accepted
        self._sampler: Sampler | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._export_lock = threading.Lock()
        self._stopped = False
        self.pid = os.getpid()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="otel-perf-profiles", daemon=True)
        self._thread.start()
        exclude = {self._thread.ident} if self._thread.ident is not None else set()
        self._sampler = Sampler(self.mode, self.hz, exclude=exclude)  # type: ignore[arg-type]
        self._sampler.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.export_window()

    def export_window(self) -> bool:
        """Export what was sampled since the previous export (nothing when no sample was taken)."""
        try:
            with self._export_lock:
                sampler = self._sampler
                if sampler is None or self.pid != os.getpid():
                    return False
                snapshot = sampler.take(_HAND_OVER_TIMEOUT)
                tracker = span_tracking.tracker()
                if tracker is not None:
                    tracker.prune()
                return self._export(snapshot)
        except Exception as exc:  # never let the export thread die, never print
            if raise_internal_errors():
                raise
            log_once(("continuous-profiling", type(exc).__name__),
                     "otel-perf: exporting a profile failed (%s: %s); continuous profiling goes on. Not logged "
                     "again.", type(exc).__name__, exc, exc_info=True)
            return False

    def _export(self, snapshot: Snapshot) -> bool:
        if not snapshot.counts:
            return False
        from otel_perf._semconv import INSTRUMENTATION_SCOPE, PROCESS_PID, SCHEMA_URL
        from otel_perf.version import __version__

        if self._resource is None:
            self._resource = _resource()
        attributes, schema_url = self._resource
        request = otlp.encode(snapshot, {**attributes, PROCESS_PID: os.getpid()}, resource_schema_url=schema_url,
                              scope_name=INSTRUMENTATION_SCOPE, scope_version=__version__,
                              scope_schema_url=SCHEMA_URL)
        accepted = bool(self.exporter.export(request, snapshot.samples))
        if accepted:
            self.exported += 1
        return accepted

    def shutdown(self, timeout: float | None = None) -> None:
        """Stop sampling and export the last partial interval (idempotent)."""
        if self._stopped or self.pid != os.getpid():
            return
        self._stopped = True
        self._stop.set()
        sampler = self._sampler
        if sampler is not None:
            sampler._stop.set()
            thread = sampler._thread
            if thread is not None and thread is not threading.current_thread():
                thread.join(_HAND_OVER_TIMEOUT)
        if hasattr(self.exporter, "retry"):
            self.exporter.retry = False  # the program is ending: one attempt, no backoff
        self.export_window()
        self._sampler = None
        try:
            self.exporter.force_flush(int((timeout if timeout is not None else 10.0) * 1000))
            self.exporter.shutdown()
        except Exception as exc:
            if raise_internal_errors():
                raise
            log_once(("continuous-profiling-shutdown", type(exc).__name__),
                     "otel-perf: closing the profiles exporter failed (%s: %s)", type(exc).__name__, exc)


# --- the process's profiler ------------------------------------------------------------------------------

_current: ContinuousProfiler | None = None
_settings: Settings | None = None
_lock = threading.Lock()
_hooks_registered = False


#: Makes the exporter of a profiler from the settings: given by the set-up layer (``otel_perf._sdk``, with
#: ``otel_perf.exporters.profiles.profile_exporter``), since a feature does not import another one
#: (docs/architecture.md).
_exporter_factory: Callable[[Settings], Any] | None = None


def set_exporter_factory(factory: Callable[[Settings], Any]) -> None:
    """Where profiles go: ``factory(settings)`` makes the exporter each profiler exports through."""
    global _exporter_factory
    _exporter_factory = factory


def current() -> ContinuousProfiler | None:
    """The running profiler of this process, if any."""
    return _current


def start(settings: Settings) -> ContinuousProfiler | None:
    """Start continuous profiling in this process as ``settings`` say (``OTEL_PERF_PROFILING``).

    Returns the profiler, or None when profiling is off or cannot run here (logged once, with why).
    """
    if settings.profiling == "off":
        return None
    problem = otlp.shape_problem()
    if problem is not None:
        log_once(("profiles-shape", problem),
                 "otel-perf: OTEL_PERF_PROFILING=%s is ignored: the installed opentelemetry-proto cannot carry "
                 "the OTLP profiles otel-perf writes (%s). The pprof endpoints of the debug server still work.",
                 settings.profiling, problem, level=logging.WARNING)
        return None
    with _lock:
        if _current is not None and _current.pid == os.getpid() and not _current._stopped:
            return _current
        factory = _exporter_factory
        if factory is None:
            log_once("profiles-no-exporter", "otel-perf: continuous profiling has no exporter set up; it stays off",
                     level=logging.WARNING)
            return None
        return _start(settings, factory(settings))


def _start(settings: Settings, exporter: Any) -> ContinuousProfiler:
    global _current, _settings
    span_tracking.install("continuous")
    profiler = ContinuousProfiler(settings.profiling, settings.profiling_hz, settings.profiling_interval,
                                  exporter)
    profiler.start()
    _current, _settings = profiler, settings
    _register_hooks()
    return profiler


def stop() -> None:
    """Stop this process's profiler, exporting its last partial interval; span tracking comes off unless
    the debug server still uses it."""
    global _current
    profiler = _current
    if profiler is not None:
        profiler.shutdown()
        _current = None
        span_tracking.release("continuous")


def _register_hooks() -> None:
    global _hooks_registered
    if _hooks_registered:
        return
    _hooks_registered = True
    # Handle.shutdown() and otel_perf.shutdown() reach stop() through otel_perf.profiling._shutdown.
    atexit.register(stop)  # the interpreter's exit (registered after the SDK's providers': runs before)
    try:
        from multiprocessing import util

        # In every multiprocessing child started by fork: export the last window when the worker ends,
        # also through os._exit (multiprocessing runs its finalizers first).
        util.register_after_fork(_register_hooks, _in_multiprocessing_child)
    except Exception:  # no multiprocessing here: nothing to register
        pass


def _in_multiprocessing_child(_: object) -> None:
    from multiprocessing.util import Finalize

    Finalize(None, stop, exitpriority=100)


def _after_fork_in_child() -> None:
    """A forked child profiles itself: a new profiler (the parent's threads did not survive the fork)."""
    global _current, _lock
    _lock = threading.Lock()
    parent, settings = _current, _settings
    if parent is None or parent._stopped or settings is None:
        return
    _current = None
    try:
        # The parent's exporter: its connections and files are made afresh in this process.
        _start(settings, parent.exporter)
    except Exception as exc:
        if raise_internal_errors():
            raise
        log_once(("continuous-profiling-fork", type(exc).__name__),
                 "otel-perf: continuous profiling could not start in a forked child (%s: %s)",
                 type(exc).__name__, exc)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
