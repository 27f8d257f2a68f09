"""The spans and log records the SDK's batch processors drop on a full queue, as ``otel_perf.exporter.dropped``.

Why this module exists: a ``BatchSpanProcessor`` holds at most ``OTEL_BSP_MAX_QUEUE_SIZE`` (2048) spans
waiting for export and drops every span that ends while the queue is full, with one "Queue full" warning
now and then and nothing else. A thread pool kept busy with spans on lost 185 000 of 270 000 job spans
that way (issue 20) while the metrics stayed complete, and nothing told the user how much of the trace
data was missing. This module counts those drops in the metric durable export already uses for what it
has to drop: ``otel_perf.exporter.dropped`` ({item}; ``otel_perf.exporter.signal`` = traces or logs,
``otel_perf.exporter.drop.reason`` = ``queue_full``).

How (``_sdk_internals``, "the SDK's batch queues"): on SDKs whose batch processor reports drops to its
metrics object, each batch processor's metrics object is wrapped (the batch span and log record processors
of the tracer and logger providers otel-perf sets up or is given, the user's own included, found when
``configure()`` or the launcher's start-up runs); on SDK 1.40, which has none, a filter on the SDK's logger
counts its "Queue full" warnings, for every batch processor of the process. Neither adds anything to a span
that finds room in the queue.

Feature layer (``exporters``): it imports the core only; ``_sdk`` calls :func:`watch_batch_queues`.
"""

from __future__ import annotations

import threading
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry._logs import get_logger_provider

from otel_perf import _semconv
from otel_perf._safety import guarded, log_once
from otel_perf._sdk_internals import (
    batch_queue_drop_mechanism,
    batch_queues,
    count_batch_queue_drops,
    count_batch_queue_drops_from_log,
)
from otel_perf.version import __version__

__all__ = ["watch_batch_queues"]

#: The instrumentation scope of the counter (durable export counts in ``otel_perf.exporters.durable``).
_SCOPE = "otel_perf.exporters.batch"

_lock = threading.Lock()
_mechanism: str | None = None  # batch_queue_drop_mechanism(), found once
_counter: Any = None  # the counter of the meter provider in use
_counter_provider: Any = None


def _count(signal: str, items: int) -> None:
    """Called on the dropping thread, once per dropped item: one Counter.add."""
    counter = _counter
    if counter is not None:
        counter.add(items, {_semconv.EXPORTER_SIGNAL: signal,
                            _semconv.EXPORTER_DROP_REASON: _semconv.EXPORTER_DROP_REASON_QUEUE_FULL})


def watch_batch_queues(tracer_provider: Any = None, logger_provider: Any = None, meter_provider: Any = None) -> None:
    """Count in ``otel_perf.exporter.dropped`` what the batch processors of these providers (default: the
    global ones) drop on a full queue, from now on. Calling it again adds the processors added since and
    moves the count to ``meter_provider``; a processor already counted is not counted twice. Never raises."""
    global _mechanism, _counter, _counter_provider
    with guarded("counting the SDK's batch-queue drops"), _lock:
        if _mechanism is None:
            _mechanism = batch_queue_drop_mechanism()
        if _mechanism == "none":
            return
        provider = meter_provider if meter_provider is not None else metrics.get_meter_provider()
        if provider is not _counter_provider:
            spec = _semconv.metric("otel_perf.exporter.dropped")
            meter = provider.get_meter(_SCOPE, __version__, schema_url=_semconv.SCHEMA_URL)
            _counter = meter.create_counter(spec.name, spec.unit, spec.description)
            _counter_provider = provider
        if _mechanism == "log":
            count_batch_queue_drops_from_log(_count)
            return
        for source in (tracer_provider if tracer_provider is not None else trace.get_tracer_provider(),
                       logger_provider if logger_provider is not None else get_logger_provider()):
            for signal, queue in batch_queues(source):
                if not count_batch_queue_drops(queue, signal, _count):
                    log_once(("batch-queue-no-metrics", type(queue).__name__),
                             "otel-perf: a %s batch processor has no metrics object; what it drops on a full "
                             "queue is not counted in otel_perf.exporter.dropped", signal)
