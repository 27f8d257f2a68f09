"""Reading OTLP JSON: flatten export requests into spans, metric points and log records.

Why this module exists: three readers consume the same OTLP JSON shape (the lines ``otel-perf run``
writes, the requests the test receiver gets, and ``otel-perf report``), and each wants plain records
(``span.parent_span_id``, ``point.attributes``) rather than nested protobuf JSON.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["LogRecord", "MetricPoint", "Span", "any_value", "attributes", "logs", "metric_points", "spans"]


def any_value(value: Mapping[str, Any]) -> Any:
    """Convert an OTLP JSON ``AnyValue`` to a Python value."""
    if "stringValue" in value:
        return value["stringValue"]
    if "intValue" in value:
        return int(value["intValue"])
    if "doubleValue" in value:
        return float(value["doubleValue"])
    if "boolValue" in value:
        return bool(value["boolValue"])
    if "arrayValue" in value:
        return [any_value(v) for v in value["arrayValue"].get("values", [])]
    if "kvlistValue" in value:
        return attributes(value["kvlistValue"].get("values", []))
    if "bytesValue" in value:
        return value["bytesValue"]
    return None


def attributes(items: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Convert an OTLP JSON attribute list to a dict."""
    return {item["key"]: any_value(item.get("value", {})) for item in items}


@dataclass
class Span:
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    status_code: int
    attributes: dict[str, Any]
    resource: dict[str, Any]
    scope: str
    start: int
    end: int
    events: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class MetricPoint:
    name: str
    unit: str
    type: str  # sum, gauge, histogram, exponentialHistogram
    attributes: dict[str, Any]
    resource: dict[str, Any]
    scope: str
    time: int
    value: float | None = None
    monotonic: bool | None = None
    temporality: int | None = None
    count: int | None = None
    sum: float | None = None
    min: float | None = None
    max: float | None = None
    bucket_counts: list[int] = field(default_factory=list)
    explicit_bounds: list[float] = field(default_factory=list)
    start_time: int = 0  # startTimeUnixNano (0 where the point has none, e.g. most gauges)


@dataclass
class LogRecord:
    body: Any
    severity_text: str
    severity_number: int
    attributes: dict[str, Any]
    resource: dict[str, Any]
    time: int
    trace_id: str
    span_id: str


def spans(request: Mapping[str, Any]) -> list[Span]:
    """The spans of one ``ExportTraceServiceRequest`` in OTLP JSON."""
    out = []
    for resource_spans in request.get("resourceSpans", []):
        resource = attributes(resource_spans.get("resource", {}).get("attributes", []))
        for scope_spans in resource_spans.get("scopeSpans", []):
            scope = scope_spans.get("scope", {}).get("name", "")
            for span in scope_spans.get("spans", []):
                out.append(Span(
                    name=span.get("name", ""),
                    trace_id=span.get("traceId", ""),
                    span_id=span.get("spanId", ""),
                    parent_span_id=span.get("parentSpanId", ""),
                    kind=int(span.get("kind", 0)),
                    status_code=int(span.get("status", {}).get("code", 0)),
                    attributes=attributes(span.get("attributes", [])),
                    resource=resource,
                    scope=scope,
                    start=int(span.get("startTimeUnixNano", 0)),
                    end=int(span.get("endTimeUnixNano", 0)),
                    events=span.get("events", []),
                ))
    return out


def _number(point: Mapping[str, Any]) -> float | None:
    if "asInt" in point:
        return int(point["asInt"])
    if "asDouble" in point:
        return float(point["asDouble"])
    return None


def metric_points(request: Mapping[str, Any]) -> list[MetricPoint]:
    """The data points of one ``ExportMetricsServiceRequest`` in OTLP JSON."""
    out = []
    for resource_metrics in request.get("resourceMetrics", []):
        resource = attributes(resource_metrics.get("resource", {}).get("attributes", []))
        for scope_metrics in resource_metrics.get("scopeMetrics", []):
            scope = scope_metrics.get("scope", {}).get("name", "")
            for metric in scope_metrics.get("metrics", []):
                for kind in ("sum", "gauge", "histogram", "exponentialHistogram"):
                    if kind in metric:
                        break
                else:
                    continue
                data = metric[kind]
                for point in data.get("dataPoints", []):
                    mp = MetricPoint(
                        name=metric.get("name", ""),
                        unit=metric.get("unit", ""),
                        type=kind,
                        attributes=attributes(point.get("attributes", [])),
                        resource=resource,
                        scope=scope,
                        time=int(point.get("timeUnixNano", 0)),
                        monotonic=data.get("isMonotonic") if kind == "sum" else None,
                        temporality=data.get("aggregationTemporality"),
                        start_time=int(point.get("startTimeUnixNano", 0)),
                    )
                    if kind in ("sum", "gauge"):
                        mp.value = _number(point)
                    else:
                        mp.count = int(point.get("count", 0))
                        mp.sum = float(point["sum"]) if "sum" in point else None
                        mp.min = float(point["min"]) if "min" in point else None
                        mp.max = float(point["max"]) if "max" in point else None
                        mp.bucket_counts = [int(c) for c in point.get("bucketCounts", [])]
                        mp.explicit_bounds = [float(b) for b in point.get("explicitBounds", [])]
                    out.append(mp)
    return out


def logs(request: Mapping[str, Any]) -> list[LogRecord]:
    """The log records of one ``ExportLogsServiceRequest`` in OTLP JSON."""
    out = []
    for resource_logs in request.get("resourceLogs", []):
        resource = attributes(resource_logs.get("resource", {}).get("attributes", []))
        for scope_logs in resource_logs.get("scopeLogs", []):
            for record in scope_logs.get("logRecords", []):
                out.append(LogRecord(
                    body=any_value(record.get("body", {})),
                    severity_text=record.get("severityText", ""),
                    severity_number=int(record.get("severityNumber", 0)),
                    attributes=attributes(record.get("attributes", [])),
                    resource=resource,
                    time=int(record.get("timeUnixNano", 0)),
                    trace_id=record.get("traceId", ""),
                    span_id=record.get("spanId", ""),
                ))
    return out
