"""``error.type``: one spelling (the fully qualified class name, builtins bare) in every instrumentation."""

from __future__ import annotations

import concurrent.futures as cf
import json
import subprocess
from typing import Any

import pytest

import otel_perf
from otel_perf._error_type import error_type_of
from otel_perf._semconv import ERROR_TYPE
from otel_perf.testing import metric_points


class Boom(Exception):
    """A program's own exception class."""


class Outer:
    class Nested(Exception):
        pass


def test_error_type_is_the_fully_qualified_class_name_and_builtins_stay_bare() -> None:
    assert error_type_of(ValueError("x")) == "ValueError"
    assert error_type_of(KeyboardInterrupt()) == "KeyboardInterrupt"
    assert error_type_of(Boom()) == f"{__name__}.Boom"
    assert error_type_of(Outer.Nested()) == f"{__name__}.Outer.Nested"
    with pytest.raises(json.JSONDecodeError) as caught:
        json.loads("{")
    assert error_type_of(caught.value) == "json.decoder.JSONDecodeError"


def test_error_type_of_classes_made_at_run_time_is_right_beyond_the_cache() -> None:
    """The name cache is bounded; classes past its bound are still named right (worked out each time)."""
    made = [type(f"Made{i}", (Exception,), {"__module__": "generated"}) for i in range(1100)]
    assert [error_type_of(cls()) for cls in made] == [f"generated.Made{i}" for i in range(1100)]


@pytest.fixture
def everything(tracer_provider: Any, meter_provider: Any, span_exporter: Any) -> Any:
    from otel_perf._config import load_settings
    from otel_perf.instrumentations.parsers import ParserInstrumentor
    from otel_perf.instrumentations.subprocess import SubprocessInstrumentor
    from otel_perf.instrumentations.tools import ToolInstrumentor
    from otel_perf.instrumentations.workers import WorkerPoolInstrumentor

    instrumentors = [ToolInstrumentor(), ParserInstrumentor(), WorkerPoolInstrumentor(), SubprocessInstrumentor()]
    for instrumentor in instrumentors:
        instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider,
                                settings=load_settings())
    yield
    for instrumentor in instrumentors:
        instrumentor.uninstrument()


def test_one_exception_gets_one_label_in_tools_parsers_pools_and_programs(
        everything: Any, span_exporter: Any, metric_reader: Any) -> None:
    """A dashboard joins on error.type: the same exception carries the same label in a tool span and its
    duration metric, a parse metric, a pool job span and its metric, and a failed program launch."""

    @otel_perf.tool
    def failing_tool() -> None:
        raise Boom("tool")

    @otel_perf.parser(name="strict")
    def failing_parser(text: str) -> None:
        raise Boom("parser")

    def failing_job() -> None:
        raise Boom("job")

    with pytest.raises(Boom):
        failing_tool()
    with pytest.raises(Boom):
        failing_parser("x")
    with cf.ThreadPoolExecutor(1) as pool, pytest.raises(Boom):
        otel_perf.name_pool(pool, "error-type").submit(failing_job).result()
    with pytest.raises(FileNotFoundError):
        subprocess.run(["/nonexistent/program"])

    expected = f"{__name__}.Boom"
    labels = {s.name: s.attributes.get(ERROR_TYPE) for s in span_exporter.get_finished_spans()}
    assert labels["execute_tool failing_tool"] == expected
    assert labels["error-type failing_job"] == expected
    assert labels["program"] == "FileNotFoundError"
    data = metric_reader.get_metrics_data()
    ours = {"gen_ai.execute_tool.duration": ("gen_ai.tool.name", "failing_tool"),
            "otel_perf.parse.duration": ("otel_perf.parser.name", "strict"),
            "otel_perf.pool.job.duration": ("otel_perf.pool.name", "error-type")}
    for name, (key, value) in ours.items():  # (other tests' series are published too: filter ours)
        labels = {p.attributes.get(ERROR_TYPE) for p in metric_points(data, name) if p.attributes.get(key) == value}
        assert labels - {None} == {expected}, name
