"""Which of otel-perf's runtime metric names contrib's system-metrics instrumentation is reporting.

Why this module exists: ``opentelemetry-instrumentation-system-metrics`` reports ``process.cpu.time``,
``process.memory.usage``, ``cpython.gc.collections`` and others under the same names as otel-perf's
runtime instrumentation. With both active, each name would be exported twice under two scopes, and
every sum over it (a dashboard, the objectives report) would count twice. Each name comes from one
scope: when system-metrics reports a name, otel-perf does not, so a set-up that already has
system-metrics exports what it exported before otel-perf was installed. The check runs at each
collection, since either instrumentation may be instrumented after the other. (System-metrics'
``uninstrument()`` leaves its instruments reporting, so its names stay its own after that too.)

Under the launcher, system-metrics is instrumented with the other instrumentors, possibly after otel-perf's
runtime instrumentation, and a collection in between (a short export interval) would export a name under
both scopes over the run. So otel-perf's pre-instrument hook tells this module when the launcher is about
to instrument system-metrics (its entry point is installed and not disabled); until its post-instrument
hook (or, should the launcher abort in between, for at most a minute) the names system-metrics reports by
default are left to it.

What system-metrics reports is read from its instrumentor (``BaseInstrumentor`` keeps one instance per
class, ``_instance``; the names it reports are the keys of its ``_config``, the defaults less
``OTEL_PYTHON_SYSTEM_METRICS_EXCLUDED_METRICS``). Where those are not what this otel-perf expects, one
log line says so: without an instance to ask, otel-perf reports its own names; without a configuration
to read, it assumes system-metrics' documented defaults. (Those two are contrib's own attributes, read
only here; which provider a meter reports to is the SDK's private ``_measurement_consumer``, read through
``otel_perf._sdk_internals`` like every SDK internal.)
"""

from __future__ import annotations

import fnmatch
import logging
import os
import sys
import time
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any

from otel_perf._safety import log_once
from otel_perf._sdk_internals import measurement_consumer

__all__ = ["SHARED_NAMES", "launcher_done", "launcher_starting", "reported_by_system_metrics"]

#: otel-perf's runtime metric names that system-metrics also reports (by default, all of them).
SHARED_NAMES = frozenset({
    "process.cpu.time",
    "process.cpu.utilization",
    "process.context_switches",
    "process.memory.usage",
    "process.memory.virtual",
    "process.thread.count",
    "cpython.gc.collections",
    "cpython.gc.collected_objects",
    "cpython.gc.uncollectable_objects",
})

_MODULE = "opentelemetry.instrumentation.system_metrics"
_NONE: frozenset[str] = frozenset()
_PENDING_AT_MOST = 60.0  # seconds: a launcher that aborted after otel-perf's pre-instrument hook

#: monotonic deadline while the launcher is about to instrument system-metrics, else None.
_launcher_pending: float | None = None


def launcher_starting(env: Mapping[str, str] | None = None) -> None:
    """The launcher's instrumentors are about to load (pre-instrument hook): note whether system-metrics is
    among them (its ``system_metrics`` entry point installed, not in ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS``)."""
    global _launcher_pending
    environ = os.environ if env is None else env
    disabled = {name.strip() for name in environ.get("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "").split(",")}
    installed = any(True for _ in entry_points(group="opentelemetry_instrumentor", name="system_metrics"))
    pending = installed and "system_metrics" not in disabled and "*" not in disabled
    _launcher_pending = time.monotonic() + _PENDING_AT_MOST if pending else None


def launcher_done() -> None:
    """The launcher loaded its instrumentors (post-instrument hook): from now on, what is instrumented."""
    global _launcher_pending
    _launcher_pending = None


def _unexpected(what: str) -> None:
    log_once(("system-metrics", what), "otel-perf: opentelemetry-instrumentation-system-metrics is not what "
             "this otel-perf expects (%s)", what, level=logging.INFO)


def _default_names() -> frozenset[str]:
    excluded = [p.strip() for p in os.environ.get("OTEL_PYTHON_SYSTEM_METRICS_EXCLUDED_METRICS", "").split(",")
                if p.strip()]
    return frozenset(n for n in SHARED_NAMES if not any(fnmatch.fnmatch(n, p) for p in excluded))


def _same_provider(theirs: Any, ours: Any) -> bool:
    """Whether two meters report to the same MeterProvider (assumed when it cannot be told)."""
    if ours is None:
        return True
    mine, their = measurement_consumer(ours), measurement_consumer(theirs)
    return mine is None or their is None or mine is their


def reported_by_system_metrics(meter: Any = None) -> frozenset[str]:
    """The names of :data:`SHARED_NAMES` that an instrumented system-metrics reports now (to the
    MeterProvider of ``meter``, when given: two providers in one process each get every name once)."""
    pending = _launcher_pending is not None and time.monotonic() < _launcher_pending
    module = sys.modules.get(_MODULE)
    if module is None:
        return _default_names() if pending else _NONE  # not imported (yet)
    cls = getattr(module, "SystemMetricsInstrumentor", None)
    if not isinstance(cls, type) or not hasattr(cls, "_instance"):
        if getattr(getattr(module, "__spec__", None), "_initializing", False):
            # Being imported right now (the launcher loading it, in another thread than this collection's):
            # its class is not defined yet, so nothing of it is instrumented yet either.
            return _default_names() if pending else _NONE
        _unexpected("no instrumentor instance to ask; otel-perf reports its own process and GC metrics")
        return _NONE
    instance = cls.__dict__.get("_instance")
    # Its uninstrument() does nothing: instruments it made (it keeps its meter) go on reporting.
    if instance is None or not (getattr(instance, "is_instrumented_by_opentelemetry", False)
                                or getattr(instance, "_meter", None) is not None):
        return _default_names() if pending else _NONE
    if not _same_provider(getattr(instance, "_meter", None), meter):
        return _NONE
    config = getattr(instance, "_config", None)
    if not isinstance(config, Mapping):
        _unexpected("no configuration to read; assuming its default metrics")
        return _default_names()
    return SHARED_NAMES.intersection(config)
