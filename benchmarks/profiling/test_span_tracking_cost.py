"""Cost of span tracking (budget in ``benchmarks/budgets.toml``: span start and end with tracking <= 1.02x without).

The span is the cheapest a user makes, so the ratio is the strictest: ``start_as_current_span`` and its
end, no attributes, on an SDK tracer provider with a BatchSpanProcessor exporting to a no-op exporter.
Group ``profiling.spans`` has it bare and with tracking installed (sequential cases, for the table);
``profiling.spans.paired`` measures both interleaved (blocks of spans alternately without and with the
hooks, the thread's CPU time, the heap frozen) and stores the median of the paired ratios, and, measured
the same way, what the hooks add to one ``attach`` plus ``detach`` (the two calls a span makes), in ns and
as a share of the bare span. Run:
``.venv/bin/python -m pytest benchmarks/profiling/test_span_tracking_cost.py --benchmark-enable --benchmark-only``.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import context as context_api
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from otel_perf.profiling import spans

SPANS_PER_BLOCK = 1000


class _NoOp(SpanExporter):
    def export(self, batch: Any) -> SpanExportResult:
        return SpanExportResult.SUCCESS


@pytest.fixture(scope="module")
def tracer() -> Iterator[Any]:
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(_NoOp(), max_queue_size=100_000, schedule_delay_millis=50))
    yield provider.get_tracer("benchmark")
    provider.shutdown()


def _spans(tracer: Any, n: int = SPANS_PER_BLOCK) -> None:
    for _ in range(n):
        with tracer.start_as_current_span("span"):
            pass


@pytest.mark.benchmark(group="profiling.spans")
def test_span_start_end_bare(benchmark: Any, tracer: Any) -> None:
    """1000 spans started and ended, no tracking."""
    spans.uninstall()
    benchmark(_spans, tracer)


@pytest.mark.benchmark(group="profiling.spans")
def test_span_start_end_tracked(benchmark: Any, tracer: Any) -> None:
    """The same 1000 spans with span tracking installed."""
    spans.install()
    try:
        benchmark(_spans, tracer)
    finally:
        spans.uninstall()


def _block(tracer: Any, tracked: bool) -> int:
    if tracked:
        spans.install()
    try:
        began = time.thread_time_ns()
        _spans(tracer)
        return time.thread_time_ns() - began
    finally:
        if tracked:
            spans.uninstall()


def _attach_detach(n: int = 20_000) -> float:
    """ns per attach + detach through the API."""
    context = context_api.get_current()
    attach, detach = context_api.attach, context_api.detach
    began = time.thread_time_ns()
    for _ in range(n):
        detach(attach(context))
    return (time.thread_time_ns() - began) / n


@pytest.mark.benchmark(group="profiling.spans.paired")
def test_span_tracking_paired(benchmark: Any, tracer: Any) -> None:
    """Interleaved: span blocks without and with tracking (order alternating), and attach+detach pairs
    without and with the hooks; medians of the paired ratios and differences go to extra_info."""
    blocks = 4 if benchmark.disabled else 200
    ratios: list[float] = []
    added: list[float] = []
    bare_ns: list[float] = []

    def measure() -> None:
        gc.collect()
        gc.freeze()
        try:
            _block(tracer, False)
            _block(tracer, True)
            for i in range(blocks):
                if i % 2:
                    bare, tracked = _block(tracer, False), _block(tracer, True)
                else:
                    tracked, bare = _block(tracer, True), _block(tracer, False)
                ratios.append(tracked / bare)
                bare_ns.append(bare / SPANS_PER_BLOCK)
            for _ in range(max(5, blocks // 20)):
                off = _attach_detach()
                spans.install()
                try:
                    on = _attach_detach()
                finally:
                    spans.uninstall()
                added.append(on - off)
        finally:
            gc.unfreeze()

    benchmark.pedantic(measure, rounds=1, iterations=1)
    span_ns = statistics.median(bare_ns)
    benchmark.extra_info.update(
        tracked_vs_bare=round(statistics.median(ratios), 4),
        tracked_vs_bare_quartiles=[round(q, 4) for q in statistics.quantiles(ratios, n=4)],
        bare_span_ns=round(span_ns),
        hooks_added_ns_per_span=round(statistics.median(added), 1),
        hooks_added_vs_span=round(1 + statistics.median(added) / span_ns, 4),
    )
