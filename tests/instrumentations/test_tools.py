"""Tool calls: execute_tool spans and the duration histogram, by decorator, block and dotted path."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import multiprocessing
import pickle
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode

import otel_perf
from otel_perf import _semconv as sc
from otel_perf._config import load_settings
from otel_perf.instrumentations import tools as tools_mod
from otel_perf.instrumentations.tools import ToolInstrumentor
from otel_perf.testing import histogram_points

DURATION = "gen_ai.execute_tool.duration"


def _instrument(tracer_provider: Any, meter_provider: Any, **settings: Any) -> ToolInstrumentor:
    instrumentor = ToolInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider,
                            settings=load_settings(env={}, **settings))
    return instrumentor


@pytest.fixture
def instrumented(tracer_provider: Any, meter_provider: Any) -> Iterator[ToolInstrumentor]:
    instrumentor = _instrument(tracer_provider, meter_provider)
    yield instrumentor
    instrumentor.uninstrument()


@pytest.fixture
def capturing(tracer_provider: Any, meter_provider: Any) -> Iterator[ToolInstrumentor]:
    instrumentor = _instrument(tracer_provider, meter_provider, tool_capture_content=True)
    yield instrumentor
    instrumentor.uninstrument()


@otel_perf.tool
def add(a: int, b: int = 1) -> int:
    """Add two numbers."""
    return a + b


@otel_perf.tool(name="searcher", type="datastore", description="Search the index")
def search(query: str) -> list[str]:
    return [query.upper()]


class ToolError(Exception):
    pass


TOOL_ERROR = f"{__name__}.ToolError"  # error.type: the fully qualified class name


@otel_perf.tool
def failing(message: str) -> None:
    raise ToolError(message)


def _points(reader: Any) -> dict[tuple[tuple[str, Any], ...], Any]:
    return {tuple(sorted(p.attributes.items())): p for p in histogram_points(reader, DURATION)}


def test_sync_tool_emits_execute_tool_span_and_duration(instrumented, span_exporter, metric_reader):
    """A decorated function returns its value and emits the GenAI span and the duration metric."""
    assert add(2, b=3) == 5
    (span,) = span_exporter.get_finished_spans()
    assert span.name == "execute_tool add"
    assert span.kind is SpanKind.INTERNAL
    assert dict(span.attributes) == {
        sc.GEN_AI_OPERATION_NAME: "execute_tool", sc.GEN_AI_TOOL_NAME: "add", sc.GEN_AI_TOOL_TYPE: "function",
    }
    assert span.status.status_code is StatusCode.UNSET
    points = _points(metric_reader)
    point = points[((sc.GEN_AI_TOOL_NAME, "add"), (sc.GEN_AI_TOOL_TYPE, "function"))]
    assert point.count == 1
    assert list(point.explicit_bounds) == list(sc.TOOL_DURATION_BOUNDARIES)
    assert 0 <= point.sum <= (span.end_time - span.start_time) / 1e9 + 0.001


def test_tool_name_type_and_description_come_from_the_decorator(instrumented, span_exporter):
    """name=, type= and description= set the span name and attributes."""
    assert search("x") == ["X"]
    (span,) = span_exporter.get_finished_spans()
    assert span.name == "execute_tool searcher"
    assert span.attributes[sc.GEN_AI_TOOL_TYPE] == "datastore"
    assert span.attributes[sc.GEN_AI_TOOL_DESCRIPTION] == "Search the index"


def test_failing_tool_marks_error_and_propagates_the_same_exception(instrumented, span_exporter,
                                                                    metric_reader):
    """The tool's exception propagates unchanged; the span and metric carry error.type."""
    with pytest.raises(ToolError) as info:
        failing("boom")
    assert str(info.value) == "boom"
    assert info.traceback[-1].name == "failing"  # raised by the tool's own frame
    (span,) = span_exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes[sc.ERROR_TYPE] == TOOL_ERROR
    assert span.events[0].name == "exception"
    points = _points(metric_reader)
    key = ((sc.ERROR_TYPE, TOOL_ERROR), (sc.GEN_AI_TOOL_NAME, "failing"), (sc.GEN_AI_TOOL_TYPE, "function"))
    assert points[key].count == 1


def test_tool_span_is_child_of_caller_and_parent_of_inner_spans(instrumented, tracer_provider, span_exporter):
    """The tool span nests under the caller's span, and spans inside the tool nest under it."""
    tracer = tracer_provider.get_tracer("test")

    @otel_perf.tool
    def inner() -> None:
        with tracer.start_as_current_span("work"):
            pass

    with tracer.start_as_current_span("parent"):
        inner()
    spans = {s.name: s for s in span_exporter.get_finished_spans()}
    assert spans["execute_tool inner"].parent.span_id == spans["parent"].context.span_id
    assert spans["work"].parent.span_id == spans["execute_tool inner"].context.span_id
    assert trace.get_current_span() is trace.INVALID_SPAN  # context restored


def test_wrapper_keeps_signature_docstring_kind_and_pickles(instrumented):
    """Signature, docstring, function kind and pickling by reference are the function's own."""
    assert add.__doc__ == "Add two numbers."
    assert str(inspect.signature(add)) == "(a: 'int', b: 'int' = 1) -> 'int'"
    assert pickle.loads(pickle.dumps(add)) is add

    @otel_perf.tool
    async def coro() -> None: ...

    @otel_perf.tool
    def gen() -> Iterator[int]:
        yield 1

    @otel_perf.tool
    async def agen() -> Any:
        yield 1

    assert inspect.iscoroutinefunction(coro)
    assert inspect.isgeneratorfunction(gen)
    assert inspect.isasyncgenfunction(agen)


def test_async_tool(instrumented, span_exporter):
    """An async tool's span covers the awaited call; errors are recorded the same way."""

    @otel_perf.tool
    async def fetch(url: str) -> str:
        await asyncio.sleep(0.01)
        return url * 2

    @otel_perf.tool
    async def broken() -> None:
        await asyncio.sleep(0)
        raise ToolError("async")

    assert asyncio.run(fetch("a")) == "aa"
    with pytest.raises(ToolError):
        asyncio.run(broken())
    ok, bad = span_exporter.get_finished_spans()
    assert ok.name == "execute_tool fetch" and (ok.end_time - ok.start_time) >= 10_000_000
    assert bad.attributes[sc.ERROR_TYPE] == TOOL_ERROR


def test_generator_tool_span_covers_iteration_and_forwards_protocol(instrumented, tracer_provider,
                                                                    span_exporter):
    """A generator tool: one span over the whole iteration; send/throw/return value pass through."""
    tracer = tracer_provider.get_tracer("test")

    @otel_perf.tool
    def echo() -> Any:
        received = []
        try:
            while True:
                with tracer.start_as_current_span("step"):
                    value = yield len(received)
                received.append(value)
        except ToolError:
            yield "thrown"
        return received

    gen = echo()
    assert span_exporter.get_finished_spans() == ()  # nothing runs before iteration
    assert next(gen) == 0
    assert trace.get_current_span() is trace.INVALID_SPAN  # consumer's code runs outside the tool span
    assert gen.send("a") == 1
    assert gen.throw(ToolError()) == "thrown"
    with pytest.raises(StopIteration) as stop:
        gen.send(None)
    assert stop.value.value == ["a"]
    spans = span_exporter.get_finished_spans()
    tool_span = next(s for s in spans if s.name == "execute_tool echo")
    assert tool_span.status.status_code is StatusCode.UNSET
    steps = [s for s in spans if s.name == "step"]
    assert steps and all(s.parent.span_id == tool_span.context.span_id for s in steps)
    assert tool_span.end_time >= max(s.end_time for s in steps)


def test_generator_closed_early_is_not_an_error_and_failure_is(instrumented, span_exporter):
    """Abandoning a generator ends its span without error; an exception inside marks it."""

    @otel_perf.tool
    def numbers() -> Iterator[int]:
        yield from range(10)

    @otel_perf.tool
    def bad() -> Iterator[int]:
        yield 1
        raise ToolError("late")

    gen = numbers()
    assert next(gen) == 0
    gen.close()
    assert list(numbers()) == list(range(10))
    with pytest.raises(ToolError):
        list(bad())
    closed, full, failed = span_exporter.get_finished_spans()
    assert closed.status.status_code is StatusCode.UNSET and sc.ERROR_TYPE not in closed.attributes
    assert full.status.status_code is StatusCode.UNSET
    assert failed.attributes[sc.ERROR_TYPE] == TOOL_ERROR


def test_async_generator_tool(instrumented, span_exporter):
    """An async generator tool: one span over the iteration, asend and early aclose forwarded."""

    @otel_perf.tool
    async def ticks(n: int) -> Any:
        for i in range(n):
            await asyncio.sleep(0)
            got = yield i
            if got == "stop":
                return

    async def main() -> tuple[list[int], int]:
        collected = [i async for i in ticks(3)]
        agen = ticks(5)
        first = await agen.__anext__()
        with pytest.raises(StopAsyncIteration):
            await agen.asend("stop")
        return collected, first

    assert asyncio.run(main()) == ([0, 1, 2], 0)
    spans = span_exporter.get_finished_spans()
    assert [s.name for s in spans] == ["execute_tool ticks", "execute_tool ticks"]
    assert all(s.status.status_code is StatusCode.UNSET for s in spans)


def test_methods_classmethods_and_staticmethods(instrumented, span_exporter):
    """Methods, classmethods (either decorator order) and staticmethods become tools."""

    class Agent:
        factor = 3

        def __init__(self) -> None:
            self.base = 10

        @otel_perf.tool
        def method(self, x: int) -> int:
            return self.base + x

        @otel_perf.tool
        @classmethod
        def outer_cm(cls, x: int) -> int:
            return cls.factor * x

        @classmethod
        @otel_perf.tool
        def inner_cm(cls, x: int) -> int:
            return cls.factor * x + 1

        @otel_perf.tool
        @staticmethod
        def static(x: int) -> int:
            return -x

    agent = Agent()
    assert (agent.method(1), Agent.outer_cm(2), Agent.inner_cm(2), agent.static(4)) == (11, 6, 7, -4)
    assert [s.name for s in span_exporter.get_finished_spans()] == [
        "execute_tool method", "execute_tool outer_cm", "execute_tool inner_cm", "execute_tool static",
    ]


def test_decorating_a_class_is_rejected():
    """A class is not a tool: wrapping it would break isinstance and subclassing."""
    with pytest.raises(TypeError, match="not classes"):
        otel_perf.tool(ToolError)


def test_tool_call_block_with_call_id(instrumented, span_exporter, metric_reader):
    """tool_call() gives code that is not a function the same span and metric, with the call id."""
    with otel_perf.tool_call("fetch", call_id="call_1") as call:
        call.set_arguments({"url": "x"})  # content capture is off: not recorded
        assert call.span.is_recording()
    with pytest.raises(ToolError), otel_perf.tool_call("fetch"):
        raise ToolError("in block")
    ok, bad = span_exporter.get_finished_spans()
    assert ok.name == "execute_tool fetch"
    assert ok.attributes[sc.GEN_AI_TOOL_CALL_ID] == "call_1"
    assert sc.GEN_AI_TOOL_CALL_ARGUMENTS not in ok.attributes
    assert bad.status.status_code is StatusCode.ERROR and bad.attributes[sc.ERROR_TYPE] == TOOL_ERROR
    counts = sorted(p.count for p in histogram_points(metric_reader, DURATION))
    assert counts == [1, 1]


def test_tool_call_async_with(instrumented, span_exporter):
    """tool_call() also works with async with."""

    async def main() -> None:
        async with otel_perf.tool_call("remote", call_id="c2"):
            await asyncio.sleep(0)

    asyncio.run(main())
    (span,) = span_exporter.get_finished_spans()
    assert span.attributes[sc.GEN_AI_TOOL_CALL_ID] == "c2"


def test_content_capture_records_arguments_and_result_as_json(capturing, span_exporter):
    """With capture on, arguments (by parameter name) and the result are JSON."""

    class Box:
        @otel_perf.tool
        def run(self, query: str, limit: int = 3) -> dict[str, Any]:
            return {"query": query, "hits": [1, 2]}

    Box().run("q", limit=5)
    with otel_perf.tool_call("block") as call:
        call.set_arguments(["a"])
        call.set_result({"ok": True})
    run_span, block_span = span_exporter.get_finished_spans()
    assert json.loads(run_span.attributes[sc.GEN_AI_TOOL_CALL_ARGUMENTS]) == {"query": "q", "limit": 5}
    assert json.loads(run_span.attributes[sc.GEN_AI_TOOL_CALL_RESULT]) == {"query": "q", "hits": [1, 2]}
    assert json.loads(block_span.attributes[sc.GEN_AI_TOOL_CALL_ARGUMENTS]) == ["a"]
    assert json.loads(block_span.attributes[sc.GEN_AI_TOOL_CALL_RESULT]) == {"ok": True}


def test_content_capture_never_fails_and_is_bounded(capturing, span_exporter):
    """Unserialisable, circular, huge and repr-raising values are recorded, truncated, never raised."""

    class BadRepr:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    circular: list[Any] = []
    circular.append(circular)

    @otel_perf.tool
    def odd(*args: Any, **kwargs: Any) -> Any:
        return {"obj": object(), "bad": BadRepr(), "bytes": b"\xff", (1, 2): "tuple key", "nan": float("nan")}

    result = odd(circular, "x" * 1_000_000, list(range(100_000)), key=BadRepr())
    assert result["bytes"] == b"\xff"
    (span,) = span_exporter.get_finished_spans()
    arguments = span.attributes[sc.GEN_AI_TOOL_CALL_ARGUMENTS]
    assert len(arguments) <= tools_mod.MAX_CONTENT_CHARS + len("...(truncated)")
    assert arguments.startswith('{"args": [[')
    result_json = json.loads(span.attributes[sc.GEN_AI_TOOL_CALL_RESULT])
    assert result_json["bad"] == "<unrepresentable BadRepr>"
    assert result_json["(1, 2)"] == "tuple key"


def test_content_capture_can_be_turned_on_by_the_standard_genai_variable():
    """OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT turns capture on, as documented."""
    settings = load_settings(env={"OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "true"})
    assert settings.tool_capture_content is True


def test_uninstrument_makes_tools_plain_calls(tracer_provider, meter_provider, span_exporter):
    """After uninstrument() decorated tools still work and emit nothing."""
    instrumentor = _instrument(tracer_provider, meter_provider)
    instrumentor.uninstrument()
    assert add(1) == 2
    with otel_perf.tool_call("x") as call:
        assert call.span is trace.INVALID_SPAN
    assert span_exporter.get_finished_spans() == ()


def test_instrument_twice_is_harmless_and_reinstrument_publishes(tracer_provider, meter_provider,
                                                                 span_exporter, metric_reader):
    """Instrumenting twice gives one span per call; after uninstrument+instrument metrics still publish."""
    instrumentor = _instrument(tracer_provider, meter_provider)
    try:
        instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
        add(1)
        assert len(span_exporter.get_finished_spans()) == 1
        metric_reader.get_metrics_data()
        instrumentor.uninstrument()
        instrumentor = _instrument(tracer_provider, meter_provider)
        add(1)
        add(2)
        (point,) = [p for p in histogram_points(metric_reader, DURATION)
                    if p.attributes[sc.GEN_AI_TOOL_NAME] == "add"]
        assert point.count == 3  # cumulative: 1 before uninstrument, 2 after
    finally:
        instrumentor.uninstrument()


def _double(x: int) -> int:
    return add(x) * 2


def test_decorated_tool_runs_in_forked_pool_worker(instrumented):
    """A decorated tool pickles to and runs in a forked process-pool worker."""
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        assert pool.map(_double, [1, 2]) == [4, 6]


# --- OTEL_PERF_TOOLS -----------------------------------------------------------------------------------


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A user module (not yet imported) with functions, a class and a non-callable."""
    name = f"user_tools_{abs(hash(tmp_path)) % 10**8}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent("""
        def lookup(key):
            return {"k": key}

        def broken():
            raise KeyError("missing")

        class Store:
            def get(self, key):
                return key * 2

            @classmethod
            def make(cls):
                return cls()

            @staticmethod
            def version():
                return 2

        class Sub(Store):
            pass

        LIMIT = 5
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_tools_by_path_patch_module_imported_later(tracer_provider, meter_provider, span_exporter,
                                                   user_module):
    """Paths whose module is imported after instrumentation become tools at import time."""
    paths = (f"{user_module}:lookup", f"{user_module}:Store.get", f"{user_module}:Store.make",
             f"{user_module}:Store.version", f"{user_module}:broken")
    instrumentor = _instrument(tracer_provider, meter_provider, tools=paths)
    try:
        module = __import__(user_module)
        assert module.lookup("a") == {"k": "a"}
        assert module.Store().get(2) == 4
        assert isinstance(module.Store.make(), module.Store)
        assert module.Store().version() == module.Store.version() == 2
        with pytest.raises(KeyError):
            module.broken()
    finally:
        instrumentor.uninstrument()
    names = [s.name for s in span_exporter.get_finished_spans()]
    assert names == ["execute_tool lookup", "execute_tool get", "execute_tool make", "execute_tool version",
                     "execute_tool version", "execute_tool broken"]
    assert span_exporter.get_finished_spans()[-1].attributes[sc.ERROR_TYPE] == "KeyError"


def test_tools_by_path_patch_imported_module_and_uninstrument_restores_identity(
        tracer_provider, meter_provider, span_exporter, user_module):
    """Paths in an already imported module are patched at once (in place: the functions stay the same
    objects, so a reference taken earlier is a tool too and pickles as itself); uninstrument restores
    the originals' code."""
    module = __import__(user_module)
    originals = (module.lookup, module.Store.__dict__["get"], module.Store.__dict__["make"])
    codes = (module.lookup.__code__, module.Store.get.__code__, module.Store.make.__func__.__code__)
    early_lookup = module.lookup
    instrumentor = _instrument(tracer_provider, meter_provider,
                               tools=(f"{user_module}:lookup", f"{user_module}:Store.get",
                                      f"{user_module}:Store.make", f"{user_module}:Sub.make"))
    try:
        assert module.lookup is originals[0] and module.lookup.__code__ is not codes[0]
        assert "make" not in module.Sub.__dict__  # Store.make is a tool, and Sub inherits it
        assert module.Sub.make().get(1) == 2
        assert early_lookup("z") == {"k": "z"}
        assert pickle.loads(pickle.dumps(early_lookup)) is module.lookup
    finally:
        instrumentor.uninstrument()
    assert (module.lookup, module.Store.__dict__["get"], module.Store.__dict__["make"]) == originals
    assert (module.lookup.__code__, module.Store.get.__code__, module.Store.make.__func__.__code__) == codes
    assert "make" not in module.Sub.__dict__  # the inherited classmethod is inherited again
    names = [s.name for s in span_exporter.get_finished_spans()]
    assert names == ["execute_tool make", "execute_tool get", "execute_tool lookup"]


def test_malformed_tools_entry_is_reported_naming_the_variable(caplog):
    """A malformed entry is reported when the settings are read, naming OTEL_PERF_TOOLS; the rest stay."""
    with caplog.at_level(logging.WARNING, logger="otel_perf"):
        settings = load_settings(env={"OTEL_PERF_TOOLS": "good.mod:func,not a path"})
    assert settings.tools == ("good.mod:func",)
    assert "OTEL_PERF_TOOLS" in caplog.text and "'not a path'" in caplog.text


def test_unresolvable_and_not_callable_paths_are_reported_once(tracer_provider, meter_provider, user_module,
                                                               caplog):
    """A never-imported module is reported at shutdown; missing, non-callable and class targets at import."""
    paths = ("never_imported_mod_xyz:func", f"{user_module}:LIMIT", f"{user_module}:Store",
             f"{user_module}:nothing")
    with caplog.at_level(logging.WARNING, logger="otel_perf"):
        instrumentor = _instrument(tracer_provider, meter_provider, tools=paths)
        module = __import__(user_module)
        assert module.LIMIT == 5 and isinstance(module.Store, type)
        assert "never_imported_mod_xyz" not in caplog.text  # not yet: it may still be imported
        instrumentor.uninstrument()
        tools_mod._report_at_exit()  # the atexit report: already reported, so nothing more
    messages = [r.getMessage() for r in caplog.records]
    assert sum("never_imported_mod_xyz:func" in m and "never imported" in m for m in messages) == 1
    assert sum(f"{user_module}:LIMIT" in m and "not callable" in m for m in messages) == 1
    assert sum(f"{user_module}:Store" in m and "is a class" in m for m in messages) == 1
    assert sum(f"{user_module}:nothing" in m and "does not exist" in m for m in messages) == 1
    assert all("OTEL_PERF_TOOLS" in m for m in messages if user_module in m or "never_imported" in m)


def test_disabled_instrumentation_leaves_tools_plain(tracer_provider, meter_provider, span_exporter):
    """OTEL_PERF_ENABLED=false: instrument() does nothing and tools are plain calls."""
    instrumentor = ToolInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider,
                            settings=load_settings(env={"OTEL_PERF_ENABLED": "false"}))
    try:
        assert add(1) == 2
    finally:
        instrumentor.uninstrument()
    assert span_exporter.get_finished_spans() == ()


def test_configure_instruments_tools_and_shutdown_reports(tracer_provider, meter_provider, span_exporter,
                                                          caplog):
    """otel_perf.configure() turns tools on (with its settings); shutdown() turns them off and reports."""
    handle = otel_perf.configure(tracer_provider=tracer_provider, meter_provider=meter_provider,
                                 tools=["never_imported_mod_abc:func"])
    try:
        assert add(1) == 2
        assert [s.name for s in span_exporter.get_finished_spans()] == ["execute_tool add"]
    finally:
        with caplog.at_level(logging.WARNING, logger="otel_perf"):
            handle.shutdown()
    assert add(1) == 2
    assert len(span_exporter.get_finished_spans()) == 1
    assert "never_imported_mod_abc:func" in caplog.text and "OTEL_PERF_TOOLS" in caplog.text


def test_tools_under_suppressed_instrumentation_get_no_span_and_no_measurement(
        instrumented, span_exporter, metric_reader):
    """suppress_instrumentation() (the SDK's exporters run under it): decorated tools of every kind and
    tool_call blocks are plain calls; outside it they are measured again."""
    from opentelemetry.instrumentation.utils import suppress_instrumentation

    @otel_perf.tool
    def add(a, b):
        return a + b

    @otel_perf.tool
    async def fetch():
        return "page"

    @otel_perf.tool
    def pages():
        yield from (1, 2)

    with suppress_instrumentation():
        assert add(1, 2) == 3
        assert asyncio.run(fetch()) == "page"
        assert list(pages()) == [1, 2]
        with otel_perf.tool_call("block") as call:
            assert call.span is trace.INVALID_SPAN
    assert span_exporter.get_finished_spans() == ()
    assert histogram_points(metric_reader, DURATION) == []
    assert add(2, 3) == 5
    assert [s.name for s in span_exporter.get_finished_spans()] == ["execute_tool add"]
