"""OTLP JSON lines files: the collector's file format, one file per process and signal."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from otel_perf import _otlpjson
from otel_perf.exporters.files import FileLogExporter, FileMetricExporter, FileSpanExporter, iter_requests


def test_spans_are_one_request_per_line_with_hex_ids(tmp_path: Path) -> None:
    exporter = FileSpanExporter(directory=tmp_path)
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("outer") as outer, tracer.start_as_current_span("inner"):
        outer.set_attribute("n", 7)
    provider.shutdown()
    lines = exporter.path.read_text().splitlines()  # type: ignore[union-attr]
    assert len(lines) == 2  # SimpleSpanProcessor: one export request per span, one line each
    first = json.loads(lines[0])
    assert "resourceSpans" in first
    spans = {s.name: s for _, r in iter_requests(tmp_path) for s in _otlpjson.spans(r)}
    assert spans["inner"].parent_span_id == spans["outer"].span_id
    assert spans["outer"].trace_id == format(outer.get_span_context().trace_id, "032x")
    assert spans["outer"].attributes == {"n": 7}
    assert exporter.path.name.startswith("traces-") and exporter.path.name.endswith(f"-{os.getpid()}.jsonl")  # type: ignore[union-attr]


def test_metrics_and_logs_files(tmp_path: Path) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    provider.get_meter("t").create_histogram("h", unit="s").record(0.5, {"k": "v"})
    exporter = FileMetricExporter(directory=tmp_path)
    exporter.export(reader.get_metrics_data())
    exporter.shutdown()
    (point,) = [p for _, r in iter_requests(exporter.path) for p in _otlpjson.metric_points(r)]  # type: ignore[arg-type]
    assert (point.name, point.unit, point.type, point.count, point.sum) == ("h", "s", "histogram", 1, 0.5)
    assert point.attributes == {"k": "v"}
    provider.shutdown()

    log_exporter = FileLogExporter(directory=tmp_path)
    logger_provider = LoggerProvider()
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(log_exporter))
    logger_provider.get_logger("t").emit(body="hello")
    logger_provider.shutdown()
    (record,) = [x for _, r in iter_requests(log_exporter.path) for x in _otlpjson.logs(r)]  # type: ignore[arg-type]
    assert record.body == "hello"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_writes_its_own_file(tmp_path: Path) -> None:
    exporter = FileSpanExporter(directory=tmp_path)
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with provider.get_tracer("t").start_as_current_span("parent-span"):
        pass
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        with provider.get_tracer("t").start_as_current_span("child-span"):
            pass
        os._exit(0)
    os.waitpid(pid, 0)
    provider.shutdown()
    files = {f.name.rsplit("-", 1)[1]: f for f in tmp_path.iterdir()}
    assert set(files) == {f"{os.getpid()}.jsonl", f"{pid}.jsonl"}
    child_spans = [s.name for _, r in iter_requests(files[f"{pid}.jsonl"]) for s in _otlpjson.spans(r)]
    assert child_spans == ["child-span"]


def test_unwritable_directory_fails_export_without_raising(tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    exporter = FileSpanExporter(directory=blocker / "sub")
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with provider.get_tracer("t").start_as_current_span("s"):
        pass
    provider.shutdown()
    assert "cannot write traces" in caplog.text


def test_truncated_line_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "traces-x-1.jsonl"
    path.write_text('{"resourceSpans":[]}\n{"resourceSp')
    assert len(list(iter_requests(path))) == 1
    assert "is not JSON" in caplog.text


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_fork_during_an_export_does_not_deadlock_the_childs_first_export(tmp_path: Path) -> None:
    """Another thread of the parent was writing (its lock held) when the program forked: the child's own
    first export still writes, into the child's own file."""
    from tests.helpers.forking import fork_while_held

    exporter = FileSpanExporter(directory=tmp_path)
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    provider.get_tracer("t").start_span("parent").end()

    def child_exports() -> None:
        provider.get_tracer("t").start_span("child").end()

    assert fork_while_held(exporter._writer._lock, child_exports) == "ok"
    names = sorted(s.name for _, r in iter_requests(tmp_path) for s in _otlpjson.spans(r))
    assert names == ["child", "parent"]
    assert len(list(tmp_path.iterdir())) == 2  # one file per process
    provider.shutdown()
