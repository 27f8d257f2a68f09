"""Every private OpenTelemetry name otel-perf uses, each with its start-up check and its public fallback.

Why this module exists: a few of otel-perf's costs and guarantees need names the OpenTelemetry packages do
not promise to keep (``docs/architecture.md``, "OpenTelemetry internals"): the context's ``ContextVar``
(three Python calls fewer per pool job), the context keys of ``suppress_instrumentation()`` (four calls
fewer per parse), the SDK configurator and its exporter-name resolution (the launcher's own set-up without
a configurator), the export locks of the batch processors and metric readers (a fork waits for the
exports in progress, so no pool worker inherits a held lock), and, in ``_sdk_internals_storage`` (re-exported
here), a meter's measurement consumer (which provider a meter reports to) and the metric storage that
``_aggregate`` publishes its histograms into (exact histograms at the price of one collection-time merge).
They all live here so that an OpenTelemetry release that moves one changes these two files only. Each is
checked where it is first bound (at import, at start-up, at the first use or at each fork); when it is not
what this otel-perf expects, one log line (INFO) says so and the caller takes the public path, which does
the same job more slowly or more coarsely (for the export locks: a fork that does not wait).

This module is core: it imports no other part of otel-perf but the guard and its storage half, and the SDK
only inside the functions that need it, so importing it costs an instrumentation nothing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextvars import ContextVar, Token
from typing import Any

from opentelemetry import context as _api_context
from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext

from otel_perf._safety import log_once
from otel_perf._sdk_internals_storage import (
    forget_histogram_points,
    measurement_consumer,
    merge_histogram,
    storage_attributes_key,
)

__all__ = [
    "check_at_startup",
    "context_var_methods",
    "export_locks",
    "exporter_name_resolver",
    "forget_global_providers",
    "forget_histogram_points",
    "measurement_consumer",
    "merge_histogram",
    "resolve_exporter_name",
    "sdk_configurator",
    "storage_attributes_key",
    "suppression_keys",
]


def _fallback(key: str, what: str, why: object) -> None:
    """One log line (INFO: nothing is lost, the public path does the same job) per internal not found."""
    log_once(("sdk-fallback", key), "otel-perf: %s is not what this otel-perf expects (%s); using the public "
             "OpenTelemetry API instead", what, why, level=logging.INFO)


# --- the API's context -----------------------------------------------------------------------------------


def context_var_methods() -> tuple[Callable[[], Any], Callable[[Any], Token[Any]], Callable[[Token[Any]], None]] | None:
    """The default runtime context's ``ContextVar`` methods (``get``, ``set``, ``reset``), or None: another
    runtime context (``OTEL_PYTHON_CONTEXT``, no surprise) or an API whose contextvars context keeps its
    variable elsewhere (logged once). The caller then uses the API's context functions."""
    runtime = getattr(_api_context, "_RUNTIME_CONTEXT", None)
    var = getattr(runtime, "_current_context", None)
    if type(runtime) is ContextVarsRuntimeContext and isinstance(var, ContextVar):
        return var.get, var.set, var.reset
    if type(runtime) is ContextVarsRuntimeContext:
        log_once("context-binding", "otel-perf: the API's contextvars runtime context is not what this otel-perf "
                 "expects (no _current_context); using the API's context functions instead", level=logging.INFO)
    return None


def suppression_keys() -> tuple[str, str] | None:
    """The context keys ``suppress_instrumentation()`` sets (the SDK's exporters set the first), or None when
    they are not where this otel-perf expects them (logged once); the caller then uses the public check."""
    try:
        from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY
        from opentelemetry.instrumentation.utils import _SUPPRESS_INSTRUMENTATION_KEY_PLAIN
    except ImportError as exc:
        log_once("context-suppression-keys", "otel-perf: the context keys of suppress_instrumentation() are not "
                 "where this otel-perf expects them (%s); using the public check instead", exc, level=logging.INFO)
        return None
    return _SUPPRESS_INSTRUMENTATION_KEY, _SUPPRESS_INSTRUMENTATION_KEY_PLAIN


# --- the SDK's environment-driven set-up -------------------------------------------------------------------

_OTLP_BY_PROTOCOL = {"grpc": "otlp_proto_grpc", "http/protobuf": "otlp_proto_http"}


def resolve_exporter_name(name: str, signal: str) -> str:
    """The entry point an exporter name means, as the SDK resolves it (public path): ``otlp`` is
    ``otlp_proto_grpc`` or ``otlp_proto_http`` by ``OTEL_EXPORTER_OTLP[_<SIGNAL>]_PROTOCOL``; every other
    name, ``otlp_proto_*`` included, is an entry point name as it is."""
    if name != "otlp":
        return name
    protocol = (os.environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL")
                or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "").strip()
    if not protocol:
        return "otlp_proto_grpc"
    if protocol not in _OTLP_BY_PROTOCOL:
        raise RuntimeError(f"Unsupported OTLP protocol '{protocol}' is configured")
    return _OTLP_BY_PROTOCOL[protocol]


def exporter_name_resolver() -> Callable[[str, str], str]:
    """The SDK's own resolution of exporter names when it is there (start-up check), else ours."""
    try:
        from opentelemetry.sdk._configuration import _get_exporter_entry_point
    except ImportError as exc:
        _fallback("exporter-names", "the SDK's exporter-name resolution", exc)
        return resolve_exporter_name
    if not callable(_get_exporter_entry_point):
        _fallback("exporter-names", "the SDK's exporter-name resolution", "not a function")
        return resolve_exporter_name
    return _get_exporter_entry_point  # type: ignore[return-value]


def sdk_configurator() -> Any:
    """The SDK's own environment-driven set-up (private ``_OTelSDKConfigurator``), or None when this SDK
    has none with the expected shape (start-up check; the caller then takes the public path)."""
    try:
        from opentelemetry.sdk._configuration import _OTelSDKConfigurator
    except ImportError as exc:
        _fallback("configurator", "the SDK's configurator", exc)
        return None
    if not (isinstance(_OTelSDKConfigurator, type) and callable(getattr(_OTelSDKConfigurator, "configure", None))):
        _fallback("configurator", "the SDK's configurator", "no configure() method")
        return None
    return _OTelSDKConfigurator


# --- the SDK's export locks (fork) ------------------------------------------------------------------------


def _is_sdk(provider: Any) -> bool:
    """Whether ``provider`` is the SDK's (or a subclass), without importing the SDK."""
    return any(cls.__module__.startswith("opentelemetry.sdk.") for cls in type(provider).__mro__)


def _is_sdk_batch(processor: Any) -> bool:
    """Whether ``processor`` is one of the SDK's batch processors (or a subclass of one)."""
    return any(cls.__name__.startswith("Batch") and cls.__module__.startswith("opentelemetry.sdk.")
               for cls in type(processor).__mro__)


def _no_export_lock(key: str, what: str, why: str) -> None:
    log_once(("sdk-fallback", key), "otel-perf: %s is not what this otel-perf expects (%s); a fork does not wait "
             "for its exports", what, why, level=logging.INFO)


def export_locks() -> Iterator[tuple[str, Any]]:
    """(signal, lock) of every export or collection the global SDK providers may have in progress: each
    batch span and log record processor's export lock, each metric reader's export lock and the meter
    provider's collection lock (``instrumentations/_workers_fork`` holds them across a fork). Checked at
    use, without importing anything (this runs in a fork hook): an SDK provider or batch processor that
    keeps them elsewhere is logged once and yields nothing (a fork then does not wait for it, as without
    otel-perf); a provider that is not the SDK's has none."""
    from opentelemetry import metrics, trace
    from opentelemetry._logs import get_logger_provider

    for signal, provider, multi_name, list_name in (
            ("traces", trace.get_tracer_provider(), "_active_span_processor", "_span_processors"),
            ("logs", get_logger_provider(), "_multi_log_record_processor", "_log_record_processors")):
        if not _is_sdk(provider):
            continue
        processors = getattr(getattr(provider, multi_name, None), list_name, None)
        if processors is None:
            _no_export_lock(f"export-locks-{signal}", f"the SDK's {signal} provider", f"no {multi_name}.{list_name}")
            continue
        for processor in processors:
            if not _is_sdk_batch(processor):
                continue  # a simple processor exports in the caller's thread: nothing runs in the background
            lock = getattr(getattr(processor, "_batch_processor", None), "_export_lock", None)
            if lock is None:
                _no_export_lock(f"export-locks-{signal}-batch", f"the SDK's {type(processor).__name__}",
                                "no _batch_processor._export_lock")
                continue
            yield signal, lock
    meter_provider = metrics.get_meter_provider()
    if not _is_sdk(meter_provider):
        return
    consumer = getattr(meter_provider, "_measurement_consumer", None)
    readers = getattr(consumer, "_reader_storages", None)
    collect_lock = getattr(consumer, "_lock", None)
    if readers is None or collect_lock is None:
        _no_export_lock("export-locks-metrics", "the SDK's meter provider", "no _measurement_consumer._lock")
        return
    for reader in list(readers):
        lock = getattr(reader, "_export_lock", None)
        if lock is not None:  # a pull reader (Prometheus) exports nothing itself
            yield "metrics", lock
    yield "metrics", collect_lock


# --- the API's global providers ----------------------------------------------------------------------------


def forget_global_providers() -> None:
    """Forget the global tracer, meter and logger providers, which the API lets a program set only once
    (tests only: ``otel_perf.testing.reset_otel_globals``, as contrib's ``TestBase`` does)."""
    from opentelemetry import trace
    from opentelemetry._logs import _internal as logs_internal
    from opentelemetry.metrics import _internal as metrics_internal
    from opentelemetry.util._once import Once

    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None
    metrics_internal._METER_PROVIDER_SET_ONCE = Once()
    metrics_internal._METER_PROVIDER = None
    metrics_internal._PROXY_METER_PROVIDER = metrics_internal._ProxyMeterProvider()
    logs_internal._LOGGER_PROVIDER_SET_ONCE = Once()
    logs_internal._LOGGER_PROVIDER = None


# --- start-up ----------------------------------------------------------------------------------------------


def check_at_startup() -> None:
    """The checks that would otherwise run at the first use, which may come at interpreter exit (the final
    metric collection): run them at process start-up instead. Never raises: a failed check is retried at
    the first publication, which takes the public path if it fails again."""
    try:
        storage_attributes_key()
    except Exception:
        pass


# === the SDK's batch queues: what they drop (issue 20.3; branch `volume`, kept apart to merge easily) =====
#
# The SDK's BatchSpanProcessor and BatchLogRecordProcessor keep their queue in one shared BatchProcessor
# (``opentelemetry.sdk._shared_internal``; the processor's ``_batch_processor``). On a full queue its
# ``emit()`` logs "Queue full, dropping ..." and, from the SDK releases that have processor metrics on, calls
# ``self._metrics.drop_items(1)``. Two ways to count, both free while the queue is not full:
#
# * "metrics": replace each processor's ``_metrics`` with a wrapper that counts ``drop_items`` with the
#   reason ``queue_full`` and passes every call on (SDKs whose ``emit`` calls ``_metrics.drop_items``);
# * "log": a filter, first on the SDK's logger, that counts the "Queue full" warnings (SDK 1.40). A logging
#   set-up that silences that logger below WARNING (or disables it) silences the count too.

#: The message ``BatchProcessor.emit`` logs for each item it drops (a %-format with the item's kind).
_QUEUE_FULL_MESSAGE = "Queue full, dropping %s."
#: ``BatchProcessor``'s ``exporting`` names, by signal.
_EXPORTING_SIGNAL = {"Span": "traces", "Log": "logs", "LogRecord": "logs"}


def batch_queue_drop_mechanism() -> str:
    """How this SDK's batch-queue drops can be counted: ``"metrics"``, ``"log"`` or ``"none"`` (start-up
    check, on the byte code of ``BatchProcessor.emit``: the names it uses)."""
    try:
        from opentelemetry.sdk._shared_internal import BatchProcessor
    except ImportError as exc:
        _fallback("batch-queue-drops", "the SDK's batch processor", exc)
        return "none"
    code = getattr(getattr(BatchProcessor, "emit", None), "__code__", None)
    names = set(code.co_names) if code is not None else set()
    if {"_metrics", "drop_items"} <= names:
        return "metrics"
    if _QUEUE_FULL_MESSAGE in (code.co_consts if code is not None else ()) and "warning" in names:
        return "log"
    _fallback("batch-queue-drops", "the SDK's batch processor", "emit() counts no drops otel-perf can see")
    return "none"


def batch_queues(provider: Any) -> list[tuple[str, Any]]:
    """``(signal, BatchProcessor)`` of each SDK batch processor of a tracer or logger provider (none for a
    provider that is not the SDK's, or whose processors are kept where this otel-perf does not look)."""
    found: list[tuple[str, Any]] = []
    for multi_name, list_name in (("_active_span_processor", "_span_processors"),
                                  ("_multi_log_record_processor", "_log_record_processors")):
        processors = getattr(getattr(provider, multi_name, None), list_name, None)
        if not isinstance(processors, tuple | list):
            continue
        for processor in processors:
            queue = getattr(processor, "_batch_processor", None)
            signal = _EXPORTING_SIGNAL.get(getattr(queue, "_exporting", ""))
            if signal is not None:
                found.append((signal, queue))
    return found


class _CountingProcessorMetrics:
    """A batch processor's metrics object that also reports the items dropped on a full queue; every
    call is passed on unchanged (the SDK's own ``otel.sdk.processor.*`` metrics stay as they were)."""

    def __init__(self, inner: Any, signal: str, on_drop: Callable[[str, int], None]) -> None:
        self.otel_perf_inner = inner
        self._signal = signal
        self._on_drop = on_drop

    def drop_items(self, count: int, *args: Any, **kwargs: Any) -> Any:
        reason = args[0] if args else kwargs.get("error_type", "queue_full")
        if reason == "queue_full":
            try:
                self._on_drop(self._signal, count)
            except Exception:
                log_once("batch-queue-drop-count", "otel-perf: cannot count an item the SDK's batch processor "
                         "dropped", exc_info=True)
        return self.otel_perf_inner.drop_items(count, *args, **kwargs)

    def finish_items(self, count: int, *args: Any, **kwargs: Any) -> Any:  # once per exported batch
        return self.otel_perf_inner.finish_items(count, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:  # register_queue_size, anything newer
        return getattr(self.otel_perf_inner, name)


def count_batch_queue_drops(queue: Any, signal: str, on_drop: Callable[[str, int], None]) -> bool:
    """Report what ``queue`` (a ``BatchProcessor``) drops on a full queue to ``on_drop(signal, count)``,
    once per queue (again: no change). False when it has no metrics object to wrap."""
    metrics = getattr(queue, "_metrics", None)
    if metrics is None or not callable(getattr(metrics, "drop_items", None)):
        return False
    if not isinstance(metrics, _CountingProcessorMetrics):
        queue._metrics = _CountingProcessorMetrics(metrics, signal, on_drop)
    return True


class _QueueFullFilter(logging.Filter):
    """Counts the SDK's "Queue full, dropping ..." warnings; lets every record through."""

    def __init__(self, on_drop: Callable[[str, int], None]) -> None:
        super().__init__()
        self.on_drop = on_drop

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == _QUEUE_FULL_MESSAGE and record.args:
            args = record.args if isinstance(record.args, tuple) else (record.args,)
            signal = _EXPORTING_SIGNAL.get(str(args[0]))
            if signal is not None:
                try:
                    self.on_drop(signal, 1)
                except Exception:
                    log_once("batch-queue-drop-count", "otel-perf: cannot count an item the SDK's batch "
                             "processor dropped", exc_info=True)
        return True


def count_batch_queue_drops_from_log(on_drop: Callable[[str, int], None]) -> None:
    """Count every batch queue's drops from the SDK's "Queue full" warnings (mechanism ``"log"``): one
    filter, placed first on the SDK's logger (before its duplicate filter) and installed once."""
    from opentelemetry.sdk._shared_internal import BatchProcessor

    logger = logging.getLogger(BatchProcessor.__module__)
    for existing in logger.filters:
        if isinstance(existing, _QueueFullFilter):
            existing.on_drop = on_drop
            return
    logger.filters.insert(0, _QueueFullFilter(on_drop))


__all__ += [  # the names of this block, kept with it (merges apart from the list above)
    "batch_queue_drop_mechanism", "batch_queues", "count_batch_queue_drops", "count_batch_queue_drops_from_log",
]


# === end of the batch queues' block ========================================================================
