"""Every private OpenTelemetry name otel-perf uses, each with its start-up check and its public fallback.

Why this module exists: a few of otel-perf's costs and guarantees need names the OpenTelemetry packages do
not promise to keep (``docs/architecture.md``, "OpenTelemetry internals"): the context's ``ContextVar``
(three Python calls fewer per pool job), the context keys of ``suppress_instrumentation()`` (four calls
fewer per parse), the SDK configurator and its exporter-name resolution (the launcher's own set-up without
a configurator), a meter's measurement consumer (which provider a meter reports to), and the metric
storage that ``_aggregate`` publishes its histograms into (exact histograms at the price of one
collection-time merge). They all live here so that an OpenTelemetry release that moves one changes this
file only. Each is checked where it is first bound (at import, at start-up or at the first use); when it
is not what this otel-perf expects, one log line (INFO: nothing is lost) says so and the caller takes the
public path, which does the same job more slowly or more coarsely.

This module is core: it imports no other part of otel-perf but the guard, and the SDK only inside the
functions that need it, so importing it costs an instrumentation nothing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextvars import ContextVar, Token
from time import time_ns
from typing import Any

from opentelemetry import context as _api_context
from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext

from otel_perf._safety import log_once

__all__ = [
    "check_at_startup",
    "context_var_methods",
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


# --- the SDK's metric storage ------------------------------------------------------------------------------


def measurement_consumer(meter: Any) -> Any:
    """What identifies a meter's SDK MeterProvider (its measurement consumer), or None when unknown (not an
    SDK meter, or an SDK that keeps it elsewhere: the caller then assumes one provider)."""
    meter = getattr(meter, "_real_meter", None) or meter  # a proxy meter made before the provider was set
    return getattr(meter, "_measurement_consumer", None)


def _storages(instrument: Any) -> tuple[Any, Any] | None:
    """(real SDK instrument, reader storages) or None when this is not an SDK instrument."""
    real = getattr(instrument, "_real_instrument", None) or instrument  # proxy instruments delegate
    consumer = getattr(real, "_measurement_consumer", None)
    if consumer is None:
        return None
    return real, consumer._reader_storages


_attributes_key: Callable[[dict[str, Any]], Any] | None = None


def storage_attributes_key() -> Callable[[dict[str, Any]], Any]:
    """How this SDK's metric storage keys an attribute set (private, and changed across releases:
    ``frozenset(attributes.items())`` up to about 1.40, ``_hash_attributes`` later). Found once (at start-up,
    else at the first publication) by recording one value into a private MeterProvider and reading the key
    it made; a scheme matching none of the known ones raises, and the caller then takes the public path."""
    global _attributes_key
    if _attributes_key is not None:
        return _attributes_key
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.resources import Resource

    candidates: list[Callable[[dict[str, Any]], Any]] = [lambda attrs: frozenset(attrs.items())]
    try:
        from opentelemetry.sdk.metrics._internal._view_instrument_match import _hash_attributes
    except ImportError:
        pass
    else:
        candidates.insert(0, _hash_attributes)
    # An explicit resource: no resource detection (it may use threads, and this can run at exit).
    provider = MeterProvider(metric_readers=[InMemoryMetricReader()], resource=Resource({}),
                             shutdown_on_exit=False)
    try:
        probe = provider.get_meter("otel_perf.startup-check").create_histogram("otel_perf.startup_check")
        attributes: dict[str, Any] = {"otel_perf.check": "key", "n": 1}
        probe.record(1.0, attributes)
        found = _storages(probe)
        if found is None:
            raise LookupError("the SDK's histogram has no measurement consumer")
        real, storages = found
        keys = [key for storage in storages.values()
                for vim in storage._get_or_init_view_instrument_match(real) for key in vim._attributes_aggregation]
    finally:
        provider.shutdown()
    for candidate in candidates:
        if keys == [candidate(attributes)]:
            _attributes_key = candidate
            return candidate
    raise LookupError(f"the SDK keys attribute sets in a way otel-perf does not know ({keys!r})")


def merge_histogram(instrument: Any, attributes: Mapping[str, Any], bucket_counts: Sequence[int], total: float,
                    low: float, high: float, bounds: tuple[float, ...],
                    representatives: Callable[[], Iterable[tuple[float, int]]]) -> bool:
    """Add one interval of a histogram into the SDK's storage of ``instrument``, in every reader's storage
    and through each reader's views: the buckets, sum, min and max as they are where the view kept the
    aggregation and its boundaries, else one measurement per value of ``representatives()`` (value,
    count). Returns False when ``instrument`` is not an SDK instrument; raises when the storage is not
    what this otel-perf expects (the caller then records through the public API from now on)."""
    from opentelemetry.sdk.metrics._internal.aggregation import (
        DefaultAggregation,
        _DropAggregation,
        _ExplicitBucketHistogramAggregation,
    )

    found = _storages(instrument)
    if found is None:
        return False
    _hash_attributes = storage_attributes_key()
    real, storages = found
    if hasattr(real, "_is_enabled") and not real._is_enabled():
        return True  # the user's meter configurator disabled this meter: drop, as record() would
    for storage in list(storages.values()):
        for vim in storage._get_or_init_view_instrument_match(real):
            attrs = dict(attributes)
            if vim._view._attribute_keys is not None:
                attrs = {k: v for k, v in attrs.items() if k in vim._view._attribute_keys}
            key = _hash_attributes(attrs)
            aggregation: Any = vim._attributes_aggregation.get(key)
            if aggregation is None:
                with vim._lock:
                    aggregation = vim._attributes_aggregation.get(key)
                    if aggregation is None:
                        factory = vim._view._aggregation
                        if isinstance(factory, DefaultAggregation):
                            factory = vim._instrument_class_aggregation[real.__class__]
                        aggregation = factory._create_aggregation(
                            real, attrs, vim._view._exemplar_reservoir_factory, time_ns()
                        )
                        vim._attributes_aggregation[key] = aggregation
            if isinstance(aggregation, _DropAggregation):
                continue
            if isinstance(aggregation, _ExplicitBucketHistogramAggregation) and aggregation._boundaries == bounds:
                with aggregation._lock:
                    if aggregation._value is None:
                        aggregation._value = aggregation._get_empty_bucket_counts()  # type: ignore[assignment]
                    values: list[int] = aggregation._value  # type: ignore[assignment]
                    for i in range(len(values)):
                        values[i] += bucket_counts[i]
                    aggregation._sum += total  # type: ignore[assignment]
                    if aggregation._record_min_max:
                        aggregation._min = min(aggregation._min, low)
                        aggregation._max = max(aggregation._max, high)
            else:
                # A user view chose another aggregation or other buckets: feed representative values.
                from opentelemetry.context import get_current
                from opentelemetry.sdk.metrics._internal.measurement import Measurement

                now = time_ns()
                for value, count in representatives():
                    for _ in range(count):
                        aggregation.aggregate(Measurement(value, now, real, get_current(), attrs))
    return True


def forget_histogram_points(instrument: Any) -> None:
    """Drop what the SDK's storage holds for ``instrument`` (forked child: those were the parent's).

    Runs in an after-fork hook: takes no lock (one held by a vanished parent thread is never released).
    """
    try:
        found = _storages(instrument)
        if found is None:
            return
        real, storages = found
        for storage in list(storages.values()):
            for vim in storage._instrument_view_instrument_matches.get(real, ()):
                vim._attributes_aggregation = {}
    except Exception:  # the SDK's private storage changed shape: the child keeps the parent's points
        log_once("aggregate-fork-reset", "otel-perf: cannot reset the SDK's histogram storage after fork")


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
