"""Parsers: every outermost parse counted exactly, sizes exact, spans only for the slow and the large."""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib
import inspect
import io
import json
import logging
import multiprocessing
import os
import pickle
import shlex
import subprocess
import sys
import textwrap
import threading
import time
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import otel_perf
from otel_perf import _safety
from otel_perf._config import load_settings
from otel_perf._patching import resolve
from otel_perf.instrumentations import _parse_probe, _parse_wrappers, parsers
from otel_perf.instrumentations.parsers import ParserInstrumentor
from otel_perf.testing import metric_points
from tests.conftest import PYTHON, clean_env

Instrument = Callable[..., ParserInstrumentor]

BUILTIN_PATHS = [path for _, path, _, _ in parsers._BUILTINS]


@pytest.fixture
def instrument(tracer_provider: Any, meter_provider: Any) -> Iterator[Instrument]:
    """instrument(**settings) with the test providers; always uninstrumented afterwards."""
    instrumentor = ParserInstrumentor()

    def start(**settings: Any) -> ParserInstrumentor:
        instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider,
                                settings=load_settings({}, **settings))
        return instrumentor

    yield start
    instrumentor.uninstrument()


def _points(reader: InMemoryMetricReader, name: str) -> dict[tuple[tuple[str, Any], ...], Any]:
    return {tuple(sorted(p.attributes.items())): p for p in metric_points(reader, name)}


def _one(reader: InMemoryMetricReader, name: str, parser_name: str, **extra: str) -> Any:
    key = tuple(sorted({"otel_perf.parser.name": parser_name, **extra}.items()))
    return _points(reader, name).get(key)


def _doc(n: int) -> str:
    """A JSON document of exactly n characters (n >= 9)."""
    text = json.dumps({"k": "x" * (n - 9)})
    assert len(text) == n
    return text


def _not_imported() -> list[str]:
    """Built-in paths whose module is not imported here (they wait for their post-import hook)."""
    return sorted(p for p in BUILTIN_PATHS if p.partition(":")[0] not in sys.modules)


def _originals() -> dict[str, Any]:
    found = {}
    for path in BUILTIN_PATHS:
        try:
            target = resolve(path)
        except (ImportError, AttributeError):
            continue
        found[path] = target.parent.__dict__[target.attribute]
    return found


# --- exact counts and sizes -------------------------------------------------------------------------


def test_counts_and_size_sums_are_exact_from_several_threads(
    instrument: Instrument, metric_reader: InMemoryMetricReader
) -> None:
    """Four threads parse JSON, shell lines and argv while collections run: exported counts and sums match."""
    instrument(parse_span_min_duration=60.0)
    parser = argparse.ArgumentParser()
    parser.add_argument("--name")
    parser.add_argument("--count", type=int)
    calls = 300
    stop = threading.Event()

    def collect() -> None:
        while not stop.is_set():
            metric_reader.collect()

    def work(seed: int) -> None:
        for i in range(calls):
            json.loads(_doc(10 + (seed * calls + i) % 50))
            shlex.split("ls -l 'a b'")
            parser.parse_args(["--name", "x" * (i % 7), "--count", "3"])

    background = threading.Thread(target=collect)
    background.start()
    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    background.join()

    total = 4 * calls
    json_size = sum(10 + k % 50 for k in range(total))
    argv_size = 4 * sum(len(" ".join(["--name", "x" * (i % 7), "--count", "3"])) for i in range(calls))
    expected = {"json": json_size, "shlex": total * len("ls -l 'a b'"), "argparse": argv_size}
    for name, size_sum in expected.items():
        duration = _one(metric_reader, "otel_perf.parse.duration", name)
        size = _one(metric_reader, "otel_perf.parse.size", name)
        assert (duration.count, size.count, size.sum) == (total, total, size_sum), name
        assert duration.sum > 0 and duration.min > 0
    assert set(_points(metric_reader, "otel_perf.parse.duration")) == {
        (("otel_perf.parser.name", n),) for n in expected}


def test_argparse_default_argv_is_sys_argv_and_subparsers_count_once(
    instrument: Instrument, metric_reader: InMemoryMetricReader, monkeypatch: pytest.MonkeyPatch
) -> None:
    """parse_args() reads sys.argv[1:]; a sub-command parse and parse_known_args inside count once."""
    instrument()
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command")
    run = commands.add_parser("run")
    run.add_argument("--fast", action="store_true")
    monkeypatch.setattr(sys, "argv", ["prog", "run", "--fast"])
    assert parser.parse_args().fast is True
    assert parser.parse_known_args(["run", "extra"])[1] == ["extra"]
    size = _one(metric_reader, "otel_perf.parse.size", "argparse")
    assert (size.count, size.sum) == (2, len("run --fast") + len("run extra"))


def test_nested_parses_count_once_by_the_outermost(
    instrument: Instrument, metric_reader: InMemoryMetricReader, tmp_path: Path
) -> None:
    """json.load calls json.loads, yaml.safe_load calls yaml.load, a user parser calls json.loads:
    each counts once."""

    @otel_perf.parser(name="command")
    def parse_command(line: str) -> dict[str, Any]:
        return {"words": shlex.split(line), "data": json.loads('{"a": 1}')}

    instrument()
    path = tmp_path / "doc.json"
    path.write_bytes(b'{"items": [1, 2, 3]}')
    with path.open("rb") as binary:
        assert json.load(binary) == {"items": [1, 2, 3]}
    with path.open("r", encoding="utf-8") as text:
        json.load(text)
    assert yaml.safe_load("a: [1, 2]") == {"a": [1, 2]}
    assert parse_command("go north") == {"words": ["go", "north"], "data": {"a": 1}}

    sizes = {k[0][1]: (p.count, p.sum) for k, p in _points(metric_reader, "otel_perf.parse.size").items()}
    file_size = path.stat().st_size
    assert sizes == {"json": (2, 2 * file_size), "yaml": (1, len("a: [1, 2]")),
                     "command": (1, len("go north"))}


def test_file_sizes_are_what_is_cheaply_knowable(
    instrument: Instrument, metric_reader: InMemoryMetricReader, tmp_path: Path
) -> None:
    """File names are stat()ed, seekable streams measured by tell(); a pipe's size is not recorded."""
    instrument()
    xml_path = tmp_path / "doc.xml"
    xml_path.write_text("<root><a>1</a><a>2</a></root>")
    assert ET.parse(xml_path).getroot().tag == "root"
    assert ET.parse(str(xml_path)).getroot().tag == "root"
    stream = io.BytesIO(b"   <root/>")
    stream.seek(3)  # only what the parse reads counts
    ET.parse(stream)
    assert ET.fromstring("<x/>").tag == "x"
    read_end, write_end = os.pipe()
    os.write(write_end, b'{"a": 1}')
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        assert json.load(pipe) == {"a": 1}

    xml = _one(metric_reader, "otel_perf.parse.size", "xml")
    assert (xml.count, xml.sum) == (4, 2 * xml_path.stat().st_size + len("<root/>") + len("<x/>"))
    assert _one(metric_reader, "otel_perf.parse.duration", "json").count == 1
    assert _one(metric_reader, "otel_perf.parse.size", "json") is None


def test_tomllib_loads_and_load(instrument: Instrument, metric_reader: InMemoryMetricReader,
                                tmp_path: Path) -> None:
    """tomllib.loads measures len() of the text; tomllib.load the bytes it read (tomli on Python 3.10)."""
    tomllib = importlib.import_module("tomllib" if sys.version_info >= (3, 11) else "tomli")
    instrument()
    path = tmp_path / "c.toml"
    path.write_bytes(b'name = "x"\n')
    assert tomllib.loads('a = 1') == {"a": 1}
    with path.open("rb") as f:
        assert tomllib.load(f) == {"name": "x"}
    size = _one(metric_reader, "otel_perf.parse.size", "tomllib")
    assert (size.count, size.sum) == (2, len("a = 1") + path.stat().st_size)


# --- errors -----------------------------------------------------------------------------------------


def test_errors_propagate_unchanged_and_carry_error_type(
    instrument: Instrument, metric_reader: InMemoryMetricReader, capsys: pytest.CaptureFixture[str]
) -> None:
    """The parser's own exception object reaches the caller; the duration series gets error.type."""
    failure = ValueError("bad command")

    @otel_perf.parser
    def strict(line: str) -> None:
        raise failure

    instrument()
    with pytest.raises(ValueError) as caught:
        strict("abc")
    assert caught.value is failure
    with pytest.raises(json.JSONDecodeError):
        json.loads("{")
    parser = argparse.ArgumentParser(prog="tool")
    parser.add_argument("--n", type=int)
    with pytest.raises(SystemExit) as usage_error:
        parser.parse_args(["--n", "x"])
    assert usage_error.value.code == 2
    with pytest.raises(SystemExit) as help_exit:
        parser.parse_args(["--help"])
    assert help_exit.value.code == 0
    capsys.readouterr()

    duration = _points(metric_reader, "otel_perf.parse.duration")
    counts = {k: p.count for k, p in duration.items()}
    name = "test_errors_propagate_unchanged_and_carry_error_type.<locals>.strict"
    assert counts == {
        (("error.type", "ValueError"), ("otel_perf.parser.name", name)): 1,
        (("error.type", "json.decoder.JSONDecodeError"), ("otel_perf.parser.name", "json")): 1,
        (("error.type", "SystemExit"), ("otel_perf.parser.name", "argparse")): 1,
        (("otel_perf.parser.name", "argparse"),): 1,  # --help exits with 0: not an error
    }
    sizes = {k[0][1]: (p.count, p.sum) for k, p in _points(metric_reader, "otel_perf.parse.size").items()}
    assert sizes == {name: (1, 3), "json": (1, 1), "argparse": (2, len("--n x") + len("--help"))}


def test_internal_fault_never_breaks_the_parse(
    instrument: Instrument, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the guard in production mode, a fault while recording is logged once; the parse still works."""
    instrument()

    class BrokenLog(list):  # type: ignore[type-arg]
        def append(self, entry: Any) -> None:
            raise RuntimeError("recording broke")

    monkeypatch.setattr(_parse_probe.probe("json"), "durations", BrokenLog())
    previous = _safety.set_raise_internal_errors(False)
    try:
        with caplog.at_level(logging.WARNING, logger="otel_perf"):
            assert json.loads("[1]") == [1]
            assert json.loads("[2]") == [2]
    finally:
        _safety.set_raise_internal_errors(previous)
    assert len([r for r in caplog.records if "recording broke" in r.getMessage()]) == 1


# --- spans ------------------------------------------------------------------------------------------


def test_slow_parse_gets_a_span_with_true_start_time_and_parent(
    instrument: Instrument, tracer_provider: Any, span_exporter: InMemorySpanExporter
) -> None:
    """A parse slower than the threshold: span 'parse {name}', child of the current span, real start."""

    @otel_perf.parser(name="slow")
    def slow(text: str) -> str:
        time.sleep(0.03)
        return text

    @otel_perf.parser(name="fast")
    def fast(text: str) -> str:
        return text

    instrument(parse_span_min_duration=0.02)
    tracer = tracer_provider.get_tracer("test")
    with tracer.start_as_current_span("request") as request:
        before = time.time_ns()
        slow("hello")
        after = time.time_ns()
        fast("hello")
    spans = {s.name: s for s in span_exporter.get_finished_spans()}
    assert set(spans) == {"request", "parse slow"}
    span = spans["parse slow"]
    assert span.parent is not None and span.parent.span_id == request.get_span_context().span_id
    assert span.context.trace_id == request.get_span_context().trace_id
    # The parse is timed by perf_counter() and placed by the wall clock, which the VM may adjust by a
    # fraction of a millisecond meanwhile: 5 ms of slack. A span started when the parse ended would
    # start after `after - 25 ms`.
    slack = 5_000_000
    assert span.end_time - span.start_time >= 30_000_000
    assert before - slack <= span.start_time <= after - 30_000_000 + slack
    assert span.end_time <= after + slack
    assert dict(span.attributes) == {"otel_perf.parser.name": "slow", "otel_perf.parse.input.size": 5}
    assert span.status.status_code is StatusCode.UNSET


def test_large_input_gets_a_span_and_a_slow_failure_is_an_error_span(
    instrument: Instrument, span_exporter: InMemorySpanExporter
) -> None:
    """Inputs above the byte threshold get a span; a slow parse that raises gets error.type and ERROR."""

    @otel_perf.parser(name="flaky")
    def flaky(text: str) -> None:
        time.sleep(0.03)
        raise KeyError(text)

    instrument(parse_span_min_duration=0.02, parse_span_min_bytes=100)
    json.loads(_doc(101))
    json.loads(_doc(100))
    with pytest.raises(KeyError):
        flaky("x")
    spans = span_exporter.get_finished_spans()
    assert [(s.name, dict(s.attributes)) for s in spans] == [
        ("parse json", {"otel_perf.parser.name": "json", "otel_perf.parse.input.size": 101}),
        ("parse flaky", {"otel_perf.parser.name": "flaky", "otel_perf.parse.input.size": 1,
                         "error.type": "KeyError"}),
    ]
    assert spans[0].parent is None
    assert spans[1].status.status_code is StatusCode.ERROR


# --- patching: identity, twice, selection, user parsers ----------------------------------------------


def test_uninstrument_restores_every_original_and_wrappers_pass_metadata_through(
    instrument: Instrument,
) -> None:
    """While instrumented every built-in parser function is still the same object (patched in place): same
    signature, docstring and name, and it pickles as itself; argparse's methods are wrappers on the class
    (passing signature, docstring and __wrapped__ through); ET.fromstring is ET.XML; uninstrument puts the
    original code and objects back."""
    originals = _originals()
    codes = {path: original.__code__ for path, original in originals.items()}
    signatures = {path: inspect.signature(original) for path, original in originals.items()}
    waiting = _not_imported()
    assert {"json:loads", "argparse:ArgumentParser.parse_args", "yaml:safe_load",
            "xml.etree.ElementTree:parse"} <= set(originals)
    instrumentor = instrument()
    for path, original in originals.items():
        target = resolve(path)
        patched = target.parent.__dict__[target.attribute]
        if path.startswith("argparse:"):
            assert patched is not original and patched.__wrapped__ is original, path
        else:
            assert patched is original, path
            assert patched.__code__ is not codes[path], path  # it runs the measuring wrapper now
        assert inspect.signature(patched) == signatures[path]
        assert patched.__doc__ == original.__doc__ and patched.__name__ == original.__name__
        assert pickle.loads(pickle.dumps(patched)) is patched
    assert ET.fromstring is ET.XML
    assert instrumentor.pending() == waiting
    instrumentor.uninstrument()
    assert _originals() == originals
    for path, original in originals.items():
        assert original.__code__ is codes[path], path
        assert "__signature__" not in vars(original)
    assert ET.fromstring is ET.XML


def test_references_taken_before_instrumentation_are_measured_and_pickle(
    instrument: Instrument, metric_reader: InMemoryMetricReader
) -> None:
    """``from json import loads`` before instrumenting: the reference is measured, and it pickles (also
    into a process pool) exactly as it does uninstrumented."""
    early_loads, early_split = json.loads, shlex.split
    bare = [pickle.dumps(early_loads, protocol) for protocol in range(pickle.HIGHEST_PROTOCOL + 1)]
    bare_split = pickle.dumps(early_split)
    instrumentor = instrument(parse_span_min_duration=60.0)
    assert early_loads('{"a": 1}') == {"a": 1}
    assert early_split("a b") == ["a", "b"]
    assert _one(metric_reader, "otel_perf.parse.duration", "json").count == 1
    assert _one(metric_reader, "otel_perf.parse.duration", "shlex").count == 1
    assert [pickle.dumps(early_loads, protocol) for protocol in range(pickle.HIGHEST_PROTOCOL + 1)] == bare
    assert pickle.dumps(early_split) == bare_split
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        assert list(pool.map(early_loads, ["[1]", "2"])) == [[1], 2]
    instrumentor.uninstrument()
    assert pickle.dumps(early_loads) == bare[pickle.DEFAULT_PROTOCOL]


def test_instrument_twice_is_harmless_and_reinstrument_keeps_publishing(
    instrument: Instrument, metric_reader: InMemoryMetricReader
) -> None:
    """A second instrument() changes nothing; after uninstrument and instrument again (same meter
    provider) calls are counted again, and calls while off are not."""
    instrumentor = instrument()
    instrument()
    json.loads("1")
    assert _one(metric_reader, "otel_perf.parse.duration", "json").count == 1
    instrumentor.uninstrument()
    json.loads("1")
    instrument()
    json.loads("1")
    json.loads("1")
    assert _one(metric_reader, "otel_perf.parse.duration", "json").count == 3


def test_builtin_selection_patches_only_the_named_parsers(instrument: Instrument) -> None:
    """OTEL_PERF_PARSERS_BUILTIN=shlex leaves json alone."""
    loads, split = json.loads.__code__, shlex.split.__code__
    instrument(parsers_builtin=["shlex"])
    assert json.loads.__code__ is loads
    assert shlex.split.__code__ is not split


def test_builtin_selection_from_the_environment(
    instrument: Instrument, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The variable is read when no argument is given."""
    split, loads = shlex.split.__code__, json.loads.__code__
    monkeypatch.setenv("OTEL_PERF_PARSERS_BUILTIN", "json,xml")
    ParserInstrumentor().instrument(settings=load_settings())
    try:
        assert shlex.split.__code__ is split
        assert json.loads.__code__ is not loads
    finally:
        ParserInstrumentor().uninstrument()


def test_dotted_paths_patch_user_parsers_imported_later(
    instrument: Instrument, metric_reader: InMemoryMetricReader, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """OTEL_PERF_PARSERS names a function and a static method in a module imported after instrument()."""
    (tmp_path / "myparsers_later.py").write_text(textwrap.dedent("""
        import json

        def parse_line(line):
            return json.loads(line)

        class Codec:
            @staticmethod
            def decode(data):
                return data.decode()
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    waiting = _not_imported()
    instrumentor = instrument(parsers=["myparsers_later:parse_line", "myparsers_later:Codec.decode"])
    assert instrumentor.pending() == sorted(
        ["myparsers_later:parse_line", "myparsers_later:Codec.decode", *waiting])
    import myparsers_later  # type: ignore[import-not-found]

    try:
        assert myparsers_later.parse_line("[1, 2]") == [1, 2]
        assert myparsers_later.Codec.decode(b"abcd") == "abcd"
        assert myparsers_later.Codec().decode(b"ab") == "ab"
        sizes = {k[0][1]: (p.count, p.sum)
                 for k, p in _points(metric_reader, "otel_perf.parse.size").items()}
        assert sizes == {"parse_line": (1, 6), "Codec.decode": (2, 6)}
        instrumentor.uninstrument()
        assert "__wrapped__" not in vars(myparsers_later.parse_line)
        assert isinstance(vars(myparsers_later.Codec)["decode"], staticmethod)
    finally:
        sys.modules.pop("myparsers_later", None)


def test_decorated_parser_is_a_pass_through_until_instrumented(
    instrument: Instrument, metric_reader: InMemoryMetricReader
) -> None:
    """@otel_perf.parser before instrumentation: calls work and are not counted; afterwards they are."""

    @otel_perf.parser
    def words(argv: list[str]) -> int:
        """Count words."""
        return len(argv)

    assert words(["a", "bb"]) == 2
    assert words.__doc__ == "Count words." and inspect.signature(words).parameters.keys() == {"argv"}
    instrument()
    assert words(["a", "bb"]) == 2
    size = _one(metric_reader, "otel_perf.parse.size",
                "test_decorated_parser_is_a_pass_through_until_instrumented.<locals>.words")
    assert (size.count, size.sum) == (1, len("a bb"))


def test_decorator_rejects_what_it_cannot_measure() -> None:
    """Coroutine functions, generators and classes raise TypeError at decoration."""

    async def fetch(text: str) -> str:
        return text

    def lines(text: str) -> Iterator[str]:
        yield text

    for target in (fetch, lines, dict):
        with pytest.raises(TypeError, match=r"otel_perf\.parser"):
            otel_perf.parser(target)


def test_argparse_wrapper_falls_back_for_an_unknown_signature(
    instrument: Instrument, metric_reader: InMemoryMetricReader
) -> None:
    """Should argparse grow a parameter, the general wrapper passes it through."""
    instrument()

    def parse_args(self: Any, args: Any = None, namespace: Any = None, *, strict: bool = False) -> Any:
        return (args, strict)

    wrapped = _parse_wrappers.wrap_argparse(parse_args, _parse_probe.probe("future"))
    assert inspect.signature(wrapped) == inspect.signature(parse_args)
    assert wrapped(object(), ["-v", "x"], strict=True) == (["-v", "x"], True)
    size = _one(metric_reader, "otel_perf.parse.size", "future")
    assert (size.count, size.sum) == (1, len("-v x"))


# --- pickling and fork ---------------------------------------------------------------------------------


@otel_perf.parser(name="module-level")
def module_level_parser(text: str) -> str:
    return text.upper()


def test_patched_functions_pickle_by_reference(instrument: Instrument) -> None:
    """Patched json.loads, ET.fromstring/XML and a decorated function still pickle (process pools)."""
    instrument()
    for func in (json.loads, ET.fromstring, ET.XML, shlex.split, module_level_parser):
        assert pickle.loads(pickle.dumps(func)) is func


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_measures_its_own_parses(
    instrument: Instrument, metric_reader: InMemoryMetricReader
) -> None:
    """A forked child keeps the patches, counts its own parses and not the parent's uncollected ones."""
    instrument()
    for _ in range(3):
        json.loads("[]")
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns when forking with threads alive (earlier tests may leave daemon threads);
        # this child only parses and exits.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: report its count through the pipe, never return into pytest
        code = 1
        try:
            json.loads("[1]")
            json.loads("[12]")
            point = _one(metric_reader, "otel_perf.parse.size", "json")
            os.write(write_end, json.dumps([point.count, point.sum]).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        reported = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert json.loads(reported) == [2, 7]
    assert _one(metric_reader, "otel_perf.parse.size", "json").count == 4  # parent: 3 + this one


# --- PyYAML imported after instrumentation -----------------------------------------------------------


YAML_LATER = textwrap.dedent("""
    import sys
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from otel_perf.instrumentations.parsers import ParserInstrumentor
    from otel_perf.testing import metric_points

    assert "yaml" not in sys.modules
    reader = InMemoryMetricReader()
    ParserInstrumentor().instrument(meter_provider=MeterProvider(metric_readers=[reader]))
    import yaml
    yaml.safe_load("a: 1")
    yaml.load("[1, 2]", Loader=yaml.SafeLoader)
    (point,) = metric_points(reader, "otel_perf.parse.size")
    print(point.attributes["otel_perf.parser.name"], point.count, point.sum)
""")


def test_yaml_imported_after_instrumentation_is_measured(tmp_path: Path) -> None:
    """The post-import hook patches PyYAML when the program imports it later."""
    script = tmp_path / "app.py"
    script.write_text(YAML_LATER)
    done = subprocess.run([PYTHON, str(script)], env=clean_env(), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["yaml", "2", str(len("a: 1") + len("[1, 2]"))]


def test_parses_under_suppressed_instrumentation_are_not_measured(
    instrument: Instrument, metric_reader: InMemoryMetricReader, span_exporter: InMemorySpanExporter
) -> None:
    """suppress_instrumentation() (set by the SDK's exporters around an export): no metric, no span, even
    for a parse over the span thresholds; the same parses outside it are measured."""
    from opentelemetry.instrumentation.utils import suppress_instrumentation

    instrument(parse_span_min_duration=0.0)
    parser = argparse.ArgumentParser()
    parser.add_argument("--name")
    with suppress_instrumentation():
        assert json.loads('{"a": 1}') == {"a": 1}
        assert parser.parse_args(["--name", "x"]).name == "x"
        assert shlex.split("a 'b c'") == ["a", "b c"]
    assert _points(metric_reader, "otel_perf.parse.duration") == {}
    assert span_exporter.get_finished_spans() == ()
    json.loads("1")
    assert _one(metric_reader, "otel_perf.parse.duration", "json").count == 1
    assert [s.name for s in span_exporter.get_finished_spans()] == ["parse json"]


def test_parses_in_an_sdk_exporter_are_not_measured(
    instrument: Instrument, metric_reader: InMemoryMetricReader
) -> None:
    """A span exporter that parses JSON, run by the SDK's own BatchSpanProcessor (which suppresses
    instrumentation around its exports): its parses are not counted as the program's."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    parsed: list[Any] = []

    class ParsingExporter(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            parsed.extend(json.loads(span.to_json()) for span in spans)
            return SpanExportResult.SUCCESS

    instrument(parse_span_min_duration=60.0)
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(ParsingExporter()))
    with provider.get_tracer("app").start_as_current_span("work"):
        pass
    provider.force_flush()
    provider.shutdown()
    assert [p["name"] for p in parsed] == ["work"]
    assert _points(metric_reader, "otel_perf.parse.duration") == {}
