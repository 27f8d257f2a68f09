"""The spans and log records the SDK's batch processors drop on a full queue are counted in
``otel_perf.exporter.dropped`` (signal, reason ``queue_full``): exactly those that never reached the exporter.

Real SDK processors with a small queue and an exporter that blocks until the test lets it go; the count is
read from a real metric reader (and, under the launcher, from a real OTLP receiver).
"""

from __future__ import annotations

import logging
import subprocess
import textwrap
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, LogRecordExporter, LogRecordExportResult
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

import otel_perf
from otel_perf._sdk_internals import batch_queue_drop_mechanism
from otel_perf.exporters._batch_drops import watch_batch_queues
from otel_perf.testing import metric_points
from tests.conftest import BIN, clean_env

QUEUE = 8


class _Blocked:
    """An exporter that holds its first batch until ``release`` is set, and keeps what it was given."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.exported = 0
        self.first_batch = threading.Event()

    def export(self, batch: Sequence[Any]) -> Any:
        self.first_batch.set()
        self.release.wait(30)
        self.exported += len(batch)
        return self.success

    def shutdown(self, *args: Any, **kwargs: Any) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


class BlockedSpanExporter(_Blocked, SpanExporter):
    success = SpanExportResult.SUCCESS


class BlockedLogExporter(_Blocked, LogRecordExporter):
    success = LogRecordExportResult.SUCCESS


def dropped(reader: Any) -> dict[tuple[str, str], int]:
    return {(p.attributes["otel_perf.exporter.signal"], p.attributes["otel_perf.exporter.drop.reason"]): p.value
            for p in metric_points(reader, "otel_perf.exporter.dropped")}


def make_spans(provider: TracerProvider, exporter: _Blocked, count: int) -> None:
    """``count`` spans while the exporter holds its first batch, so the queue fills up."""
    tracer = provider.get_tracer("test")
    for _ in range(QUEUE):
        tracer.start_span("fill").end()
    assert exporter.first_batch.wait(10)  # the worker holds a batch in export(): the queue has no drain
    for _ in range(count - QUEUE):
        tracer.start_span("more").end()


def test_mechanism_is_known_for_this_sdk() -> None:
    """The supported SDK range has a way to count: its processor metrics (1.41+) or its warning (1.40)."""
    assert batch_queue_drop_mechanism() in ("metrics", "log")


def test_spans_dropped_on_a_full_queue_are_counted_exactly(meter_provider: Any, metric_reader: Any) -> None:
    """The counter equals the spans made minus the spans the exporter received."""
    exporter = BlockedSpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=QUEUE, max_export_batch_size=QUEUE,
                                                   schedule_delay_millis=60_000))
    watch_batch_queues(provider, None, meter_provider)
    make_spans(provider, exporter, 100)
    exporter.release.set()
    provider.shutdown()  # exports what is still queued
    lost = 100 - exporter.exported
    assert lost >= 100 - 3 * QUEUE  # one batch in export, one queue full: the rest was dropped
    assert dropped(metric_reader) == {("traces", "queue_full"): lost}


def test_log_records_dropped_on_a_full_queue_are_counted_exactly(meter_provider: Any, metric_reader: Any) -> None:
    """The same for the batch log record processor, with signal ``logs``."""
    exporter = BlockedLogExporter()
    provider = LoggerProvider()
    provider.add_log_record_processor(BatchLogRecordProcessor(exporter, max_queue_size=QUEUE,
                                                              max_export_batch_size=QUEUE,
                                                              schedule_delay_millis=60_000))
    watch_batch_queues(None, provider, meter_provider)
    logger = logging.getLogger("tests.batch_drops")
    logger.propagate = False
    with warnings.catch_warnings():  # the SDK's handler is deprecated in newer SDKs, and the floor's only one
        warnings.simplefilter("ignore", DeprecationWarning)
        handler = LoggingHandler(logger_provider=provider)
    logger.addHandler(handler)
    try:
        for _ in range(QUEUE):
            logger.warning("fill")
        assert exporter.first_batch.wait(10)
        for _ in range(100 - QUEUE):
            logger.warning("more")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    exporter.release.set()
    provider.shutdown()
    lost = 100 - exporter.exported
    assert lost >= 100 - 3 * QUEUE
    assert dropped(metric_reader) == {("logs", "queue_full"): lost}


def test_nothing_dropped_reports_no_drops(meter_provider: Any, metric_reader: Any) -> None:
    """A queue with room drops nothing, and the counter is absent."""
    exporter = BlockedSpanExporter()
    exporter.release.set()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=512, schedule_delay_millis=60_000))
    watch_batch_queues(provider, None, meter_provider)
    tracer = provider.get_tracer("test")
    for _ in range(100):
        tracer.start_span("fits").end()
    provider.shutdown()
    assert exporter.exported == 100
    assert sum(dropped(metric_reader).values()) == 0


def test_watching_twice_counts_each_drop_once(meter_provider: Any, metric_reader: Any) -> None:
    """configure() and the launcher's start-up both watch the providers: a drop still counts once."""
    exporter = BlockedSpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=QUEUE, max_export_batch_size=QUEUE,
                                                   schedule_delay_millis=60_000))
    watch_batch_queues(provider, None, meter_provider)
    watch_batch_queues(provider, None, meter_provider)
    make_spans(provider, exporter, 50)
    exporter.release.set()
    provider.shutdown()
    assert dropped(metric_reader) == {("traces", "queue_full"): 50 - exporter.exported}


def test_configure_counts_the_users_own_batch_span_processor(otel_globals: None, metric_reader: Any) -> None:
    """A user's TracerProvider with their own BatchSpanProcessor, set before otel_perf.configure(): its
    drops are counted in the meter provider configure() uses."""
    from opentelemetry import trace
    from opentelemetry.sdk.metrics import MeterProvider

    exporter = BlockedSpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=QUEUE, max_export_batch_size=QUEUE,
                                                   schedule_delay_millis=60_000))
    trace.set_tracer_provider(provider)
    meters = MeterProvider(metric_readers=[metric_reader])
    handle = otel_perf.configure("drops", meter_provider=meters, instrument=False)
    try:
        make_spans(provider, exporter, 60)
        exporter.release.set()
        provider.force_flush()
        assert dropped(metric_reader) == {("traces", "queue_full"): 60 - exporter.exported}
    finally:
        exporter.release.set()
        handle.shutdown()
        provider.shutdown()
        meters.shutdown()


@pytest.mark.skipif(batch_queue_drop_mechanism() != "metrics", reason="this SDK's processors have no metrics")
def test_the_sdks_own_processor_metrics_still_count(monkeypatch: pytest.MonkeyPatch, meter_provider: Any,
                                                    metric_reader: Any) -> None:
    """With the SDK's own processor metrics on (OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED), they count as
    before: the wrapper passes every call on, and both counts agree."""
    monkeypatch.setenv("OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED", "true")
    exporter = BlockedSpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=QUEUE, max_export_batch_size=QUEUE,
                                                   schedule_delay_millis=60_000, meter_provider=meter_provider))
    watch_batch_queues(provider, None, meter_provider)
    make_spans(provider, exporter, 40)
    exporter.release.set()
    provider.shutdown()
    sdk = {p.attributes.get("error.type"): p.value for p in metric_points(metric_reader,
                                                                            "otel.sdk.processor.span.processed")}
    lost = 40 - exporter.exported
    assert dropped(metric_reader) == {("traces", "queue_full"): lost}
    assert sdk == {"queue_full": lost, None: exporter.exported}


def test_the_sdks_queue_full_warning_counts_where_processors_have_no_metrics(
        monkeypatch: pytest.MonkeyPatch, meter_provider: Any, metric_reader: Any) -> None:
    """The fallback (SDK 1.40, whose processors report no drops): the SDK's "Queue full" warnings are
    counted, exactly, for every batch processor of the process, even though the SDK's own duplicate filter
    lets one warning through in 20 s."""
    from opentelemetry.sdk._shared_internal import BatchProcessor

    from otel_perf import _sdk_internals
    from otel_perf.exporters import _batch_drops

    monkeypatch.setattr(_batch_drops, "_mechanism", "log")
    sdk_logger = logging.getLogger(BatchProcessor.__module__)
    filters = list(sdk_logger.filters)
    try:
        exporter = BlockedSpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=QUEUE,
                                                       max_export_batch_size=QUEUE, schedule_delay_millis=60_000))
        watch_batch_queues(None, None, meter_provider)
        assert isinstance(sdk_logger.filters[0], _sdk_internals._QueueFullFilter)
        make_spans(provider, exporter, 70)
        exporter.release.set()
        provider.shutdown()
    finally:
        sdk_logger.filters[:] = filters  # later tests count through the processors' metrics again
    assert dropped(metric_reader) == {("traces", "queue_full"): 70 - exporter.exported}


APP = textwrap.dedent("""
    from opentelemetry import trace

    tracer = trace.get_tracer("drops-e2e")
    for i in range(3000):
        tracer.start_span("burst").end()
    print("made", 3000)
""")


@pytest.mark.e2e
def test_launcher_reports_the_spans_it_dropped(tmp_path: Path, otlp_receiver: Any) -> None:
    """Under opentelemetry-instrument with an 8-span queue, a burst of 3000 spans: the count the process
    reported covers every span the receiver did not get. With a live export thread it may be a little
    higher: the SDK checks its queue and inserts without a lock, so a span that found the queue full gets in
    after all when the export thread takes a batch out in between (at most one per batch)."""
    script = tmp_path / "app.py"
    script.write_text(APP)
    environment = clean_env(**otlp_receiver.env("grpc"), OTEL_PYTHON_DISTRO="otel_perf",
                            OTEL_SERVICE_NAME="drops-e2e", OTEL_BSP_MAX_QUEUE_SIZE="8",
                            OTEL_BSP_MAX_EXPORT_BATCH_SIZE="8")
    result = subprocess.run([str(BIN / "opentelemetry-instrument"), "python", str(script)], env=environment,
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    points = otlp_receiver.wait_for(lambda r: r.latest_points("otel_perf.exporter.dropped"))
    counts = {(p.attributes["otel_perf.exporter.signal"], p.attributes["otel_perf.exporter.drop.reason"]): p.value
              for p in points}
    received = sum(1 for span in otlp_receiver.spans() if span.name == "burst")
    lost = 3000 - received
    assert lost > 0
    assert lost <= counts[("traces", "queue_full")] <= lost + max(8, received // 4)
