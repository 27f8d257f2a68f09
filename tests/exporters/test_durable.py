"""Durable OTLP exporters against the real OTLP test receiver (gRPC and HTTP), in process.

Fault injection: the receiver answers "unavailable", rejects, stalls, or is not there at all.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from otel_perf import _semconv
from otel_perf.exporters.durable import DurableLogExporter, DurableMetricExporter, DurableSpanExporter
from otel_perf.testing import OTLPReceiver, metric_points

PROTOCOLS = ["grpc", "http/protobuf"]
FAST = {"min_backoff": 0.05, "max_backoff": 0.2, "poll_interval": 0.2}


def _endpoint(receiver: OTLPReceiver, protocol: str, signal: str) -> str:
    return receiver.grpc_endpoint if protocol == "grpc" else f"{receiver.http_endpoint}/v1/{signal}"


def _transport(protocol: str) -> str:
    return "grpc" if protocol == "grpc" else "http"


@pytest.fixture
def exporters() -> Iterator[list[Any]]:
    """Exporters made by a test; shut down (bounded) afterwards so no sender thread outlives it."""
    made: list[Any] = []
    yield made
    for exporter in made:
        exporter.shutdown()


def _span_exporter(made: list[Any], receiver: OTLPReceiver, protocol: str, spool: Path,
                   **kwargs: Any) -> DurableSpanExporter:
    options = {**FAST, "timeout": 5.0, **kwargs}
    exporter = DurableSpanExporter(spool_dir=str(spool), endpoint=_endpoint(receiver, protocol, "traces"),
                                   protocol=protocol, insecure=True, **options)
    made.append(exporter)
    return exporter


def _batch(tracer_provider: TracerProvider, names: list[str]) -> list[Any]:
    """Finished SDK spans named ``names`` (what a batch processor would hand to export())."""
    spans = []
    tracer = tracer_provider.get_tracer("test")
    for name in names:
        span = tracer.start_span(name)
        span.end()
        spans.append(span)
    return spans


def _dropped(reader: Any, reason: str, signal: str = "traces") -> int:
    return int(sum(p.value for p in metric_points(reader, "otel_perf.exporter.dropped")
                   if p.attributes.get(_semconv.EXPORTER_DROP_REASON) == reason
                   and p.attributes.get(_semconv.EXPORTER_SIGNAL) == signal))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_spans_metrics_and_logs_arrive_over_the_configured_protocol(
        otlp_receiver: OTLPReceiver, tmp_path: Path, protocol: str, exporters: list[Any]) -> None:
    """Each signal goes through the spool to the receiver over gRPC or HTTP, compressed when configured."""
    common = {"spool_dir": str(tmp_path), "protocol": protocol, "insecure": True, "compression": "gzip",
              **FAST}
    spans = DurableSpanExporter(endpoint=_endpoint(otlp_receiver, protocol, "traces"), **common)
    logs = DurableLogExporter(endpoint=_endpoint(otlp_receiver, protocol, "logs"), **common)
    metric_exporter = DurableMetricExporter(endpoint=_endpoint(otlp_receiver, protocol, "metrics"), **common)
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(spans))
    logger_provider = LoggerProvider()
    logger_provider.add_log_record_processor(BatchLogRecordProcessor(logs))
    meter_provider = MeterProvider(metric_readers=[PeriodicExportingMetricReader(metric_exporter,
                                                                                 export_interval_millis=60_000)])
    with tracer_provider.get_tracer("t").start_as_current_span("work"):
        logger_provider.get_logger("t").emit(body="hello")
        meter_provider.get_meter("t").create_counter("work.items").add(3)
    tracer_provider.shutdown()
    logger_provider.shutdown()
    meter_provider.shutdown()
    transport = _transport(protocol)
    assert [s.name for s in otlp_receiver.spans(transport)] == ["work"]
    assert [r.body for r in otlp_receiver.logs(transport)] == ["hello"]
    assert [p.value for p in otlp_receiver.metric_points("work.items", transport)] == [3]
    assert not list(tmp_path.rglob("*.otlp"))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_batches_spooled_while_the_backend_is_unavailable_arrive_in_order_once_it_answers(
        otlp_receiver: OTLPReceiver, tmp_path: Path, protocol: str, exporters: list[Any],
        tracer_provider: TracerProvider) -> None:
    """Retryable failures keep the batches on disk; they arrive in order, once each, when it recovers."""
    otlp_receiver.status = "unavailable"
    exporter = _span_exporter(exporters, otlp_receiver, protocol, tmp_path)
    names = [f"b{b}-s{i}" for b in range(8) for i in range(3)]
    for b in range(8):
        assert exporter.export(_batch(tracer_provider, names[b * 3:(b + 1) * 3])).name == "SUCCESS"
    assert not exporter.force_flush(300)  # the backend refuses: nothing delivered, all still spooled
    assert len(exporter.pending) == 8
    assert otlp_receiver.spans() == []
    otlp_receiver.status = "ok"
    assert exporter.force_flush(5000)
    assert [s.name for s in otlp_receiver.spans()] == names


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_rejected_batch_is_dropped_counted_and_logged_once_not_retried(
        otlp_receiver: OTLPReceiver, tmp_path: Path, protocol: str, exporters: list[Any],
        tracer_provider: TracerProvider, meter_provider: MeterProvider, metric_reader: Any,
        caplog: pytest.LogCaptureFixture) -> None:
    """HTTP 400 / gRPC INVALID_ARGUMENT: the items are counted as dropped, one warning, no retry."""
    otlp_receiver.status = "reject"
    exporter = _span_exporter(exporters, otlp_receiver, protocol, tmp_path, meter_provider=meter_provider)
    with caplog.at_level(logging.WARNING, logger="otel_perf"):
        exporter.export(_batch(tracer_provider, ["r1", "r2", "r3"]))
        exporter.export(_batch(tracer_provider, ["r4", "r5"]))
        assert exporter.force_flush(5000)  # settled: nothing left to send
    assert _dropped(metric_reader, "rejected") == 5
    assert len([r for r in caplog.records if "rejected" in r.getMessage()]) == 1
    otlp_receiver.status = "ok"
    exporter.export(_batch(tracer_provider, ["after"]))
    assert exporter.force_flush(5000)
    assert [s.name for s in otlp_receiver.spans()] == ["after"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_stalled_backend_does_not_hold_up_the_programs_work(
        otlp_receiver: OTLPReceiver, tmp_path: Path, protocol: str, exporters: list[Any]) -> None:
    """While a request hangs in a 5 s stall, the program's spans still flow through the SDK pipeline."""
    otlp_receiver.stall_seconds = 5.0
    exporter = _span_exporter(exporters, otlp_receiver, protocol, tmp_path, timeout=10.0)
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter, max_export_batch_size=10,
                                                   schedule_delay_millis=10))
    tracer = provider.get_tracer("work")
    with tracer.start_as_current_span("first"):
        pass
    provider.force_flush()
    otlp_receiver.wait_for(lambda r: exporter.sending, timeout=10)  # the request is inside the stall
    for i in range(200):  # the program's own work, exporting through the same pipeline
        with tracer.start_as_current_span(f"work-{i}"):
            pass
    assert provider.force_flush(10_000)  # every batch handed to the exporter
    work_done_while_stalled = exporter.sending and not otlp_receiver.requests
    otlp_receiver.stall_seconds = 0.0
    assert work_done_while_stalled
    assert exporter.force_flush(10_000)
    assert [s.name for s in otlp_receiver.spans()] == ["first"] + [f"work-{i}" for i in range(200)]
    provider.shutdown()


def test_a_full_spool_drops_the_oldest_and_counts_exactly_how_many(
        tmp_path: Path, exporters: list[Any], tracer_provider: TracerProvider,
        meter_provider: MeterProvider, metric_reader: Any) -> None:
    """With room for three batches, eight batches leave the newest three; the counter says 25 spans."""
    down = OTLPReceiver().start()
    down.stop()  # a port nobody listens on
    exporter = _span_exporter(exporters, down, "grpc", tmp_path, min_backoff=60, max_backoff=60,
                              poll_interval=60, meter_provider=meter_provider)
    batches = [[f"b{b}-s{i}" for i in range(5)] for b in range(8)]
    exporter.export(_batch(tracer_provider, batches[0]))
    down.wait_for(lambda r: exporter._sender is not None and exporter._sender.failures >= 1, timeout=10)
    entry_size = max(p.stat().st_size for p in tmp_path.rglob("*.otlp"))
    exporter.spool.max_bytes = 3 * entry_size + entry_size // 2
    for batch in batches[1:]:
        exporter.export(_batch(tracer_provider, batch))
    assert len(exporter.spool.entries()) == 3
    assert _dropped(metric_reader, "spool_full") == 25
    with OTLPReceiver(grpc_port=down.grpc_port) as up:
        assert exporter.force_flush(5000)
        assert [s.name for s in up.spans()] == [n for batch in batches[5:] for n in batch]


def test_entries_from_an_earlier_run_are_replayed_when_the_exporter_starts(
        tmp_path: Path, exporters: list[Any], tracer_provider: TracerProvider) -> None:
    """An exporter shut down while the backend was down leaves its batches; the next one sends them."""
    receiver = OTLPReceiver().start()
    receiver.stop()
    first = _span_exporter([], receiver, "http/protobuf", tmp_path, timeout=0.5)
    first.export(_batch(tracer_provider, ["old-1", "old-2"]))
    first.shutdown()  # bounded by its timeout although the backend is down
    assert len(list(tmp_path.rglob("*.otlp"))) == 1
    with OTLPReceiver(http_port=receiver.http_port) as up:
        second = _span_exporter(exporters, up, "http/protobuf", tmp_path)
        up.wait_for(lambda r: len(r.spans()) == 2, timeout=10)
        second.export(_batch(tracer_provider, ["new"]))
        assert second.force_flush(5000)
        assert [s.name for s in up.spans()] == ["old-1", "old-2", "new"]


def test_a_corrupt_entry_is_moved_aside_and_counted_and_the_rest_is_sent(
        otlp_receiver: OTLPReceiver, tmp_path: Path, exporters: list[Any], tracer_provider: TracerProvider,
        meter_provider: MeterProvider, metric_reader: Any) -> None:
    """A damaged entry (a disk fault, a foreign file) neither blocks the queue nor is sent."""
    (tmp_path / "traces").mkdir()
    (tmp_path / "traces" / "00000000000000000001-0000000001-0000000001.otlp").write_bytes(b"garbage")
    exporter = _span_exporter(exporters, otlp_receiver, "grpc", tmp_path, meter_provider=meter_provider)
    exporter.export(_batch(tracer_provider, ["fine"]))
    assert exporter.force_flush(5000)
    assert [s.name for s in otlp_receiver.spans()] == ["fine"]
    assert [p.name for p in (tmp_path / "traces" / "corrupt").iterdir()] == [
        "00000000000000000001-0000000001-0000000001.otlp"]
    corrupt = metric_points(metric_reader, _semconv.EXPORTER_SPOOL_CORRUPT)
    assert [(p.attributes[_semconv.EXPORTER_SIGNAL], p.value) for p in corrupt] == [("traces", 1)]


def test_signal_specific_variables_win_over_the_general_ones(
        otlp_receiver: OTLPReceiver, tmp_path: Path, exporters: list[Any], tracer_provider: TracerProvider,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """OTEL_EXPORTER_OTLP_TRACES_* beat OTEL_EXPORTER_OTLP_*: endpoint, protocol, compression, timeout."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "30")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"{otlp_receiver.http_endpoint}/v1/traces")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "gzip")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "3")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-tenant=a%20b")
    monkeypatch.setenv("OTEL_PERF_SPOOL_DIR", str(tmp_path))
    exporter = DurableSpanExporter(**FAST)
    exporters.append(exporter)
    assert (exporter.target.protocol, exporter.target.compression, exporter.timeout) == (
        "http/protobuf", "gzip", 3.0)
    assert dict(exporter.target.headers) == {"x-tenant": "a b"}
    exporter.export(_batch(tracer_provider, ["configured"]))
    assert exporter.force_flush(5000)
    assert [s.name for s in otlp_receiver.spans("http")] == ["configured"]
    assert (tmp_path / "traces").is_dir()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_exports_through_its_own_sender(
        otlp_receiver: OTLPReceiver, tmp_path: Path, exporters: list[Any],
        tracer_provider: TracerProvider) -> None:
    """After fork the child starts its own sender thread (threads do not survive fork) and delivers."""
    exporter = _span_exporter(exporters, otlp_receiver, "http/protobuf", tmp_path)
    exporter.export(_batch(tracer_provider, ["parent"]))
    assert exporter.force_flush(5000)
    child_spans = _batch(tracer_provider, ["child"])
    with warnings.catch_warnings():
        # Python 3.12+ warns about fork() in a multi-threaded process: forking such a process is the point.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:
        code = 1
        try:
            exporter.export(child_spans)
            code = 0 if exporter.force_flush(5000) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert sorted(s.name for s in otlp_receiver.spans()) == ["child", "parent"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_only_the_batch_whose_answer_was_lost_is_duplicated(
        otlp_receiver: OTLPReceiver, tmp_path: Path, protocol: str, exporters: list[Any],
        tracer_provider: TracerProvider) -> None:
    """A backend that accepts but answers after the timeout gets the head batch again; nothing else."""
    otlp_receiver.stall_seconds = 1.0
    exporter = _span_exporter(exporters, otlp_receiver, protocol, tmp_path, timeout=0.3)
    batches = [[f"b{b}-s{i}" for i in range(3)] for b in range(3)]
    for batch in batches:
        exporter.export(_batch(tracer_provider, batch))
    otlp_receiver.wait_for(lambda r: r.spans(), timeout=10)  # accepted, but the answer came too late
    otlp_receiver.stall_seconds = 0.0
    expected = [n for batch in batches for n in batch]
    otlp_receiver.wait_for(lambda r: set(expected) <= {s.name for s in r.spans()}, timeout=10)
    sender = exporter._sender
    assert sender is not None
    # Every attempt that timed out was still accepted: one copy each, plus the answered one.
    otlp_receiver.wait_for(
        lambda r: [s.name for s in r.spans()].count("b0-s0") == sender.failed_attempts + 1, timeout=10)
    received = [s.name for s in otlp_receiver.spans()]
    assert list(dict.fromkeys(received)) == expected
    duplicated = {n for n in received if received.count(n) > 1}
    assert duplicated == set(batches[0])


@pytest.mark.parametrize("obstacle", ["directory-named-like-an-entry", "file-named-corrupt", "lock-is-a-directory"])
def test_unexpected_objects_in_the_spool_do_not_stop_delivery(
        otlp_receiver: OTLPReceiver, tmp_path: Path, obstacle: str, exporters: list[Any],
        tracer_provider: TracerProvider, meter_provider: MeterProvider, metric_reader: Any,
        caplog: pytest.LogCaptureFixture) -> None:
    """Whatever else sits in traces/, all 30 batches arrive in order, nothing counts as dropped, the
    obstacle is logged once, and the sender lets go of every descriptor and lock it took."""
    traces = tmp_path / "traces"
    traces.mkdir()
    if obstacle == "directory-named-like-an-entry":
        (traces / "00000000000000000001-0000000001-0000000001-64.otlp").mkdir()
    elif obstacle == "file-named-corrupt":
        (traces / "corrupt").write_bytes(b"someone's file")
        (traces / "00000000000000000001-0000000001-0000000001-7.otlp").write_bytes(b"garbage")
    else:
        (traces / ".replay.lock").mkdir()
    exporter = _span_exporter(exporters, otlp_receiver, "grpc", tmp_path, meter_provider=meter_provider)
    names = [f"b{b}" for b in range(30)]
    with caplog.at_level(logging.WARNING, logger="otel_perf"):
        for name in names:
            assert exporter.export(_batch(tracer_provider, [name])).name == "SUCCESS"
        assert exporter.force_flush(10_000)
        exporter.export(_batch(tracer_provider, ["last"]))
        assert exporter.force_flush(10_000)
    assert [s.name for s in otlp_receiver.spans()] == [*names, "last"]
    assert _dropped(metric_reader, "spool_full") == _dropped(metric_reader, "spool_error") == 0
    messages = [r.getMessage() for r in caplog.records if r.name == "otel_perf"]
    assert len(messages) == 1, messages
    exporter.shutdown()
    assert not exporter.spool._fds
