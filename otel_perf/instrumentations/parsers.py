"""Parse metrics for every call at almost no cost; spans only for the slow and the large parses.

Why this module exists: a program spends its time parsing in places nobody measures (command lines,
JSON payloads, configuration files), and those calls sit on its hottest paths. One SDK
``Histogram.record`` costs here about as much as a ``json.loads`` of 1 KB, so the measurements cannot go
through the SDK call by call. Each parse costs a plain closure, two ``perf_counter()`` reads, a
thread-local re-entrancy flag and a ``list.append`` of its duration (and one of its size) to its parser's
logs, which are folded in bulk into :class:`~otel_perf._aggregate.Series` (every 256 parses and before each metric
collection) and published as real OTel histograms at each collection, exactly. Only a parse slower or
larger than the thresholds gets a span, created after the fact with its true start time.

Nested parses count once, by the outermost: ``json.load`` calls ``json.loads``, argparse's
``parse_args`` calls ``parse_known_args``, a user's parser may call ``json.loads``; the inner calls see
the thread's flag and run untouched.

The built-in parser functions (and the user's, when they are plain functions at their own
``module:qualname``) are patched in place (:mod:`otel_perf._inplace`): ``json.loads`` stays the same
object, so a reference bound before instrumentation (``from json import loads`` at import time) is
measured too, and pickles (into a process pool, say) exactly as it does uninstrumented. argparse's
``parse_args``/``parse_known_args`` are replaced on the class instead: every call looks them up there
(so every call is measured), and a trampoline costs more than their +3% budget has left.

Parses made under ``suppress_instrumentation()`` (the SDK's exporters serialise and parse) are neither
measured nor spanned: one read of the current context per parse.
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
import threading
from collections.abc import Callable, Mapping
from time import perf_counter, time_ns
from typing import Any, Final, TypeVar, overload

from opentelemetry.metrics import Meter
from opentelemetry.trace import Status, StatusCode, Tracer

from otel_perf._aggregate import AggregatedHistogram, Series, take
from otel_perf._config import Settings
from otel_perf._context import SUPPRESSION_KEYS, get_current_or_suppressed
from otel_perf._error_type import error_type_of
from otel_perf._patching import Patcher
from otel_perf._safety import guarded, log_once
from otel_perf._semconv import (
    DURATION_BOUNDARIES,
    ERROR_TYPE,
    PARSE_DURATION,
    PARSE_INPUT_SIZE,
    PARSE_SIZE,
    PARSE_SPAN_NAME,
    PARSER_NAME,
    SIZE_BOUNDARIES,
    metric,
)
from otel_perf.instrumentations import PerfInstrumentor

__all__ = ["ParserInstrumentor", "parser"]

_F = TypeVar("_F", bound=Callable[..., Any])
_OWNER: Final = "otel_perf_parsers"
_UNKNOWN: Final = -1  # size not cheaply knowable: no size measurement, never "large"
_FOLD_AT: Final = 256  # a probe's logs are folded into its series at this many parses (about 16 KB)


#: Per thread, ``_flag.state[0]`` is True while a measured parse runs, so nested parses are not counted.
#: A one-item list rather than an attribute: the hot path pays one thread-local lookup, not three. A plain
#: ``threading.local`` whose ``state`` a thread sets at its first parse reads faster than a subclass with
#: ``__init__`` (26 against 37 ns here), paid twice by an argparse parse (parse_args, then the nested
#: parse_known_args) within its +3% budget.
_flag = threading.local()


class _Session:
    """One ``instrument()`` of the parsers: its histograms, tracer and span thresholds."""

    def __init__(self, tracer: Tracer, meter: Meter, settings: Settings) -> None:
        duration, size = metric(PARSE_DURATION), metric(PARSE_SIZE)
        self.duration = AggregatedHistogram(duration.name, duration.unit, duration.description,
                                            DURATION_BOUNDARIES)
        self.size = AggregatedHistogram(size.name, size.unit, size.description, SIZE_BOUNDARIES)
        self.tracer = tracer
        self.min_duration = float(settings.parse_span_min_duration)
        self.min_bytes = int(settings.parse_span_min_bytes)
        self._meter = meter
        self.duration.bind(meter)
        self.size.bind(meter)
        self.duration.add_drain(_fold_all)
        self.size.add_drain(_fold_all)

    def close(self) -> None:
        # Hand what was recorded since the last collection to the SDK first, so that the final
        # collection of a shutdown still exports it.
        for histogram in (self.duration, self.size):
            with guarded("parsers: final publication"):
                histogram.publish()
            histogram.unbind(self._meter)


class _Probe:
    """What the wrappers of one parser name record into; rebound to the session at each instrument().

    The hot path reads ``on``, ``min_duration`` and ``min_bytes``, appends the duration to ``durations``
    and a known size to ``sizes`` (``list.append`` is atomic: no lock, no thread-local lookup, and the two
    histograms need no pairing, so no tuple either). :meth:`fold` records the logs into the session's
    series in bulk when ``durations`` holds :data:`_FOLD_AT` entries and before every publication.
    Recording each parse into two series as it ended cost about 0.7 µs in a loop, against a +3% budget of
    about 1.3 µs for a whole argparse parse (benchmarks/instrumentations/test_parsers.py).
    """

    __slots__ = ("_errors", "_fold_lock", "_session", "duration", "durations", "min_bytes", "min_duration",
                 "name", "on", "size", "sizes", "span_name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.span_name = PARSE_SPAN_NAME.format(name)
        self.on = False
        self.duration: Series | None = None
        self.size: Series | None = None
        self.min_duration = 0.0
        self.min_bytes = 0
        self._errors: dict[str, Series] = {}
        self._session: _Session | None = None
        self.durations: list[float] = []
        self.sizes: list[int] = []
        self._fold_lock = threading.Lock()

    def activate(self, session: _Session) -> None:
        self.fold()  # what was logged in the previous session stays in it
        # The series are created at the first fold (see _series): a parser that is never called adds
        # no series for the collections to walk.
        self.duration = self.size = None
        self.min_duration = session.min_duration
        self.min_bytes = session.min_bytes
        self._errors = {}
        self._session = session
        self.on = True

    def _series(self) -> tuple[Series, Series]:
        session = self._session
        assert session is not None  # activate() set it before any call can get here
        duration, size = self.duration, self.size
        if duration is None or size is None:
            attributes = {PARSER_NAME: self.name}
            duration = session.duration.series(attributes)  # thread-safe: one series per attribute set
            size = session.size.series(attributes)
            if self._session is session:  # not re-activated meanwhile by another instrument()
                self.duration, self.size = duration, size
        return duration, size

    def fold(self, wait: bool = True) -> None:
        """Record the logged parses into the series.

        Args:
            wait: wait for a fold running in another thread (publication, which must see everything
                logged before it). The hot path passes False and leaves the log to the running fold.
        """
        lock = self._fold_lock
        if not lock.acquire(wait):
            return
        try:
            durations = take(self.durations)
            sizes = take(self.sizes)
        finally:
            lock.release()
        if not (durations or sizes) or self._session is None:
            return
        duration, size = self._series()
        duration.record_many(durations)
        size.record_many(sizes)

    def forget_log(self) -> None:
        """In a forked child: the logs are the parent's, and its lock may have been held by a parent thread
        (replace it rather than acquire it)."""
        self.durations = []
        self.sizes = []
        self._fold_lock = threading.Lock()

    def deactivate(self) -> None:
        self.on = False
        self.fold()

    def failed(self, elapsed: float, end: float, size: int, exc: BaseException) -> None:
        """Record a parse that raised ``exc`` (the caller re-raises it, untouched)."""
        with guarded(f"parsers: recording a failed {self.name} parse"):
            session = self._session
            if session is None:
                return
            duration, size_series = self._series()
            if isinstance(exc, SystemExit) and exc.code in (0, None):
                error_type = None  # argparse's --help/--version: a successful parse that exits
                series = duration
            else:
                error_type = error_type_of(exc)
                found = self._errors.get(error_type)
                if found is None:
                    found = session.duration.series({PARSER_NAME: self.name, ERROR_TYPE: error_type})
                    self._errors[error_type] = found
                series = found
            series.record(elapsed)
            if size >= 0:
                size_series.record(size)
            if elapsed > self.min_duration or size > self.min_bytes:
                self.span(elapsed, end, size, error_type)

    def span(self, elapsed: float, end: float, size: int, error_type: str | None) -> None:
        """Emit the span of a finished parse: true start and end time, child of the current span."""
        session = self._session
        if session is None:
            return
        # perf_counter() times the parse; the wall clock places it: now, minus the time since it ended.
        end_ns = time_ns() - int((perf_counter() - end) * 1e9)
        start_ns = end_ns - int(elapsed * 1e9)
        attributes: dict[str, Any] = {PARSER_NAME: self.name}
        if size >= 0:
            attributes[PARSE_INPUT_SIZE] = size
        if error_type is not None:
            attributes[ERROR_TYPE] = error_type
        span = session.tracer.start_span(self.span_name, start_time=start_ns, attributes=attributes)
        if error_type is not None:
            span.set_status(Status(StatusCode.ERROR, error_type))
        span.end(end_time=end_ns)


_lock = threading.Lock()
_probes: dict[str, _Probe] = {}
_session: _Session | None = None


def _forget_logs() -> None:
    # A forked child starts from empty series (_aggregate resets them): the parent's logged parses stay
    # the parent's.
    for probe in _probes.values():
        probe.forget_log()


def _fold_all() -> None:
    """Before the parse histograms publish: fold every probe's logs."""
    for probe in list(_probes.values()):
        probe.fold()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_logs)


def _probe(name: str) -> _Probe:
    """The probe of parser ``name``, created once; active at once when a session is running."""
    with _lock:
        found = _probes.get(name)
        if found is None:
            found = _probes[name] = _Probe(name)
            if _session is not None:
                found.activate(_session)
        return found


def _fault(where: str, exc: Exception) -> None:
    # A fault of ours after the parse returned: logged once and swallowed (re-raised under our tests).
    with guarded(where):
        raise exc


# --- sizes: cheap, and -1 when not cheaply knowable ---------------------------------------------------


def _text_size(args: tuple[Any, ...], kwargs: dict[str, Any], arg: str) -> int:
    """len() of the first argument, or of keyword argument ``arg``."""
    try:
        return len(args[0] if args else kwargs[arg])
    except (TypeError, KeyError):
        return _UNKNOWN


def _joined_length(argv: Any) -> int:
    """len(" ".join(argv)): joining 20 short strings costs a quarter of summing their len()s."""
    if not isinstance(argv, (list, tuple)):
        return _UNKNOWN  # an iterator was consumed by the parse: its length is gone
    try:
        return len(" ".join(argv))
    except TypeError:
        return _UNKNOWN


def _argv_size(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """argparse: length of the joined argv (``sys.argv[1:]`` when args is None); args[0] is the parser."""
    argv = args[1] if len(args) > 1 else kwargs.get("args")
    if argv is None:
        argv = sys.argv[1:]
    return _joined_length(argv)


def _input_size(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> int:
    """A user's parser: the first argument that is text, bytes, or a list of strings (an argv)."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, (str, bytes, bytearray)):
            return len(value)
        if isinstance(value, memoryview):
            return value.nbytes
        if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
            return _joined_length(value)
    return _UNKNOWN


_KNOWN, _TELL, _PATH = 0, 1, 2


def _source_start(source: Any, paths: bool) -> tuple[int, int]:
    """Before a parse of ``source``: (how its size will be known, value)."""
    if paths and isinstance(source, (str, bytes, os.PathLike)):
        return _PATH, 0  # a file name: stat() after the parse
    if isinstance(source, (str, bytes, bytearray)):
        return _KNOWN, len(source)
    try:
        if source.seekable():
            return _TELL, source.tell()  # the parse reads to the end: tell() after minus tell() now
    except Exception:  # not a seekable stream (a pipe, an object with read() only): size unknown
        pass
    return _KNOWN, _UNKNOWN


def _source_size(source: Any, start: tuple[int, int]) -> int:
    how, value = start
    if how == _KNOWN:
        return value
    try:
        if how == _PATH:
            return os.stat(source).st_size
        return int(source.tell()) - value
    except Exception:
        return _UNKNOWN


# --- the wrappers ---------------------------------------------------------------------------------------
# A plain closure instead of wrapt on this hot path (STYLE.md, "Hot paths"): wrapt's FunctionWrapper costs
# about 20 bare calls, a closure about 5, and benchmarks/instrumentations/test_parsers.py holds the whole
# wrapper to +15% of a 1 KB json.loads. For the same reason the wrappers below repeat their few lines
# instead of sharing a helper call, and the text and argparse wrappers compute the size inline.
# functools.wraps passes __wrapped__, signature and docstring through.


def _wrap_text(original: _F, probe: _Probe, arg: str) -> _F:
    """A wrapper for parsers of text or bytes (its first argument, or keyword ``arg``): size = len()."""
    flag = _flag
    clock = perf_counter
    current, (suppress, suppress_plain) = get_current_or_suppressed, SUPPRESSION_KEYS

    @functools.wraps(original)
    def parse_wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            state = flag.state
        except AttributeError:  # this thread's first parse
            state = flag.state = [False]
        if state[0] or not probe.on:
            return original(*args, **kwargs)
        context = current()
        if context and (context.get(suppress) or context.get(suppress_plain)):
            return original(*args, **kwargs)  # suppress_instrumentation(): e.g. the SDK's exporters
        state[0] = True
        start = clock()
        try:
            result = original(*args, **kwargs)
        except BaseException as exc:
            end = clock()
            state[0] = False
            probe.failed(end - start, end, _text_size(args, kwargs, arg), exc)
            raise
        end = clock()
        state[0] = False
        try:
            elapsed = end - start
            try:
                size = len(args[0])
            except (IndexError, TypeError):
                size = _text_size(args, kwargs, arg)
            durations = probe.durations
            durations.append(elapsed)
            if size >= 0:
                probe.sizes.append(size)
            if len(durations) >= _FOLD_AT:
                probe.fold(False)
            if elapsed > probe.min_duration or size > probe.min_bytes:
                probe.span(elapsed, end, size, None)
        except Exception as fault:
            _fault(f"parsers: recording a {probe.name} parse", fault)
        return result

    return parse_wrapper  # type: ignore[return-value]


def _wrap(original: _F, probe: _Probe, size_of: Callable[[tuple[Any, ...], dict[str, Any]], int]) -> _F:
    """A wrapper measuring ``original``; ``size_of(args, kwargs)`` runs after the parse."""
    flag = _flag
    clock = perf_counter
    current, (suppress, suppress_plain) = get_current_or_suppressed, SUPPRESSION_KEYS

    @functools.wraps(original)
    def parse_wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            state = flag.state
        except AttributeError:  # this thread's first parse
            state = flag.state = [False]
        if state[0] or not probe.on:
            return original(*args, **kwargs)
        context = current()
        if context and (context.get(suppress) or context.get(suppress_plain)):
            return original(*args, **kwargs)  # suppress_instrumentation(): e.g. the SDK's exporters
        state[0] = True
        start = clock()
        try:
            result = original(*args, **kwargs)
        except BaseException as exc:
            end = clock()
            state[0] = False
            probe.failed(end - start, end, size_of(args, kwargs), exc)
            raise
        end = clock()
        state[0] = False
        try:
            elapsed = end - start
            size = size_of(args, kwargs)
            durations = probe.durations
            durations.append(elapsed)
            if size >= 0:
                probe.sizes.append(size)
            if len(durations) >= _FOLD_AT:
                probe.fold(False)
            if elapsed > probe.min_duration or size > probe.min_bytes:
                probe.span(elapsed, end, size, None)
        except Exception as fault:
            _fault(f"parsers: recording a {probe.name} parse", fault)
        return result

    return parse_wrapper  # type: ignore[return-value]


_ARGPARSE_PARAMETERS: Final = ("self", "args", "namespace")


def _wrap_argparse(original: _F, probe: _Probe) -> _F:
    """argparse's parse_args/parse_known_args ``(self, args=None, namespace=None)``: explicit parameters
    instead of ``*args, **kwargs``, and the size inline; this parse is the tightest budget (+3%)."""
    if tuple(inspect.signature(original).parameters) != _ARGPARSE_PARAMETERS:
        return _wrap(original, probe, _argv_size)  # a future signature: the general wrapper
    flag = _flag
    clock = perf_counter
    current, (suppress, suppress_plain) = get_current_or_suppressed, SUPPRESSION_KEYS

    @functools.wraps(original)
    def parse_wrapper(self: Any, args: Any = None, namespace: Any = None) -> Any:
        try:
            state = flag.state
        except AttributeError:  # this thread's first parse
            state = flag.state = [False]
        if state[0] or not probe.on:
            return original(self, args, namespace)
        context = current()
        if context and (context.get(suppress) or context.get(suppress_plain)):
            return original(self, args, namespace)  # suppress_instrumentation(): e.g. the SDK's exporters
        state[0] = True
        start = clock()
        try:
            result = original(self, args, namespace)
        except BaseException as exc:
            end = clock()
            state[0] = False
            probe.failed(end - start, end, _joined_length(sys.argv[1:] if args is None else args), exc)
            raise
        end = clock()
        state[0] = False
        try:
            elapsed = end - start
            argv = sys.argv[1:] if args is None else args
            size = _UNKNOWN
            if isinstance(argv, (list, tuple)):  # _joined_length, inlined
                try:
                    size = len(" ".join(argv))
                except TypeError:
                    pass
            durations = probe.durations
            durations.append(elapsed)
            if size >= 0:
                probe.sizes.append(size)
            if len(durations) >= _FOLD_AT:
                probe.fold(False)
            if elapsed > probe.min_duration or size > probe.min_bytes:
                probe.span(elapsed, end, size, None)
        except Exception as fault:
            _fault(f"parsers: recording a {probe.name} parse", fault)
        return result

    return parse_wrapper  # type: ignore[return-value]


def _wrap_source(original: _F, probe: _Probe, arg: str, paths: bool) -> _F:
    """A wrapper for parsers of a file object (or text; or a file name when ``paths``)."""
    flag = _flag
    clock = perf_counter
    current, (suppress, suppress_plain) = get_current_or_suppressed, SUPPRESSION_KEYS

    @functools.wraps(original)
    def parse_wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            state = flag.state
        except AttributeError:  # this thread's first parse
            state = flag.state = [False]
        if state[0] or not probe.on:
            return original(*args, **kwargs)
        context = current()
        if context and (context.get(suppress) or context.get(suppress_plain)):
            return original(*args, **kwargs)  # suppress_instrumentation(): e.g. the SDK's exporters
        source = args[0] if args else kwargs.get(arg)
        before = _source_start(source, paths)
        state[0] = True
        start = clock()
        try:
            result = original(*args, **kwargs)
        except BaseException as exc:
            end = clock()
            state[0] = False
            probe.failed(end - start, end, _source_size(source, before), exc)
            raise
        end = clock()
        state[0] = False
        try:
            elapsed = end - start
            size = _source_size(source, before)
            durations = probe.durations
            durations.append(elapsed)
            if size >= 0:
                probe.sizes.append(size)
            if len(durations) >= _FOLD_AT:
                probe.fold(False)
            if elapsed > probe.min_duration or size > probe.min_bytes:
                probe.span(elapsed, end, size, None)
        except Exception as fault:
            _fault(f"parsers: recording a {probe.name} parse", fault)
        return result

    return parse_wrapper  # type: ignore[return-value]


def _check_plain(func: Any, what: str) -> str | None:
    """Why ``func`` cannot be measured as a parser, or None when it can."""
    if not callable(func) or isinstance(func, type):
        return f"{what} is not a function"
    if (inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func)
            or inspect.isgeneratorfunction(func)):
        return (f"{what} is a coroutine or generator function; otel-perf measures parsers that return "
                f"their result")
    return None


def _user_replacement(path: str) -> Callable[[Any], Any]:
    """The Patcher factory for a dotted path in OTEL_PERF_PARSERS."""

    def install(raw: Any) -> Any:
        kind = type(raw) if isinstance(raw, (staticmethod, classmethod)) else None
        func = raw.__func__ if kind is not None else raw
        problem = _check_plain(func, path)
        if problem is not None:
            log_once((_OWNER, "not-a-parser", path), "otel-perf: OTEL_PERF_PARSERS: %s; left as it is",
                     problem)
            return raw
        wrapped = _wrap(func, _probe(getattr(func, "__qualname__", path)), _input_size)
        return kind(wrapped) if kind is not None else wrapped

    return install


# Built-in parsers: (name of OTEL_PERF_PARSERS_BUILTIN, dotted path, size rule, argument name).
# "text": len() of the argument; "source": a file object (tell() after minus before), or text for yaml;
# "path": a file name (stat) or a file object; "argv": argparse.
_BUILTINS: Final[tuple[tuple[str, str, str, str], ...]] = (
    ("json", "json:loads", "text", "s"),
    ("json", "json:load", "source", "fp"),
    ("argparse", "argparse:ArgumentParser.parse_args", "argv", "args"),
    ("argparse", "argparse:ArgumentParser.parse_known_args", "argv", "args"),
    ("shlex", "shlex:split", "text", "s"),
    *((("tomllib", "tomllib:loads", "text", "s"), ("tomllib", "tomllib:load", "source", "fp"))
      if sys.version_info >= (3, 11) else ()),
    # tomli is tomllib's backport (otel-perf's own TOML reader on Python 3.10): the same parser name.
    ("tomllib", "tomli:loads", "text", "s"),
    ("tomllib", "tomli:load", "source", "fp"),
    ("xml", "xml.etree.ElementTree:XML", "text", "text"),
    ("xml", "xml.etree.ElementTree:fromstring", "text", "text"),
    ("xml", "xml.etree.ElementTree:parse", "path", "source"),
    ("yaml", "yaml:load", "source", "stream"),
    ("yaml", "yaml:safe_load", "source", "stream"),
)


def _builtin_replacement(name: str, rule: str, arg: str,
                         made: dict[int, tuple[Any, Any]]) -> Callable[[Any], Any]:
    """The Patcher factory of one built-in path. One wrapper per original function, so that two names of
    one function (``ElementTree.fromstring is ElementTree.XML``) stay one object, and pickle by name."""

    def install(original: Any) -> Any:
        known = made.get(id(original))
        if known is not None and known[0] is original:
            return known[1]
        probe = _probe(name)
        if rule == "text":
            wrapper = _wrap_text(original, probe, arg)
        elif rule == "argv":
            wrapper = _wrap_argparse(original, probe)
        else:
            wrapper = _wrap_source(original, probe, arg, paths=rule == "path")
        made[id(original)] = (original, wrapper)
        return wrapper

    return install


class ParserInstrumentor(PerfInstrumentor):
    """Measure parse calls: built-in parsers and the user's own.

    Usage::

        from otel_perf.instrumentations.parsers import ParserInstrumentor

        ParserInstrumentor().instrument(tracer_provider=tp, meter_provider=mp)
        ...
        ParserInstrumentor().uninstrument()   # the original functions come back (identity)

    (``opentelemetry-instrument`` and ``otel_perf.configure()`` do this by themselves.)

    Emits, for every outermost parse call: ``otel_perf.parse.duration`` (s; ``otel_perf.parser.name``,
    ``error.type`` when it raised) and ``otel_perf.parse.size`` (By; ``otel_perf.parser.name``). A span
    ``parse {otel_perf.parser.name}`` only for parses slower than ``OTEL_PERF_PARSE_SPAN_MIN_DURATION`` or
    larger than ``OTEL_PERF_PARSE_SPAN_MIN_BYTES``.

    Reads ``OTEL_PERF_PARSERS_BUILTIN`` (json, argparse, shlex, tomllib, xml, yaml; default all),
    ``OTEL_PERF_PARSERS`` (dotted paths ``pkg.mod:func`` of the user's own parsers), and the two
    thresholds. Functions decorated with :func:`otel_perf.parser` are measured while it is instrumented.
    """

    _patcher: Patcher | None = None
    _session: _Session | None = None

    def _start(self, **kwargs: Any) -> None:
        global _session
        session = _Session(self.tracer, self.meter, self.settings)
        self._session = session
        with _lock:
            _session = session
            for probe in _probes.values():
                probe.activate(session)
        patcher = self._patcher = Patcher(_OWNER)
        made: dict[int, tuple[Any, Any]] = {}
        selected = set(self.settings.parsers_builtin)
        for name, path, rule, arg in _BUILTINS:
            if name in selected:
                # In place, so that references bound before instrumentation are measured and pickle; not
                # argparse's methods: every call looks them up on the class (always measured), and a
                # trampoline on each of the two nested calls costs about 0.3% of a 10-option parse, which
                # the +3% budget does not have (benchmarks/instrumentations/test_parsers.py).
                patcher.replace(path, _builtin_replacement(name, rule, arg, made), in_place=rule != "argv")
        for path in self.settings.parsers:
            patcher.replace(path, _user_replacement(path), in_place=True)

    def _stop(self) -> None:
        global _session
        with _lock:
            if _session is self._session:
                _session = None
                for probe in _probes.values():
                    probe.deactivate()
        if self._patcher is not None:
            self._patcher.unpatch_all()
            self._patcher = None
        if self._session is not None:
            self._session.close()
            self._session = None

    def pending(self) -> list[str]:
        """Dotted paths waiting for their module to be imported (e.g. ``yaml:safe_load``)."""
        return self._patcher.pending() if self._patcher is not None else []


@overload
def parser(func: _F, /) -> _F: ...


@overload
def parser(*, name: str | None = None) -> Callable[[_F], _F]: ...


def parser(func: _F | None = None, /, *, name: str | None = None) -> _F | Callable[[_F], _F]:
    """Measure a function of your own as a parser (``otel_perf.parse.*``, spans for slow/large calls).

    Usage::

        @otel_perf.parser
        def parse_command(line: str) -> Command: ...

        @otel_perf.parser(name="manifest")
        def load_manifest(data: bytes) -> Manifest: ...

    Calls are measured while parsers are instrumented (``otel_perf.configure()`` or the launcher); at
    other times the wrapper only checks two flags and calls the function. The size is ``len()`` of the
    first argument that is text or bytes, or of the joined first list of strings (an argv); otherwise
    it is not recorded. Parses nested inside it (``json.loads`` in your parser) are not counted
    separately.

    Args:
        func: the function (when used as ``@otel_perf.parser`` without parentheses).
        name: ``otel_perf.parser.name``; default the function's qualified name (``__qualname__``).

    Returns:
        The wrapped function (signature, docstring and ``__wrapped__`` passed through).

    Raises:
        TypeError: ``func`` is not a plain function (a class, a coroutine or generator function).
    """

    def decorate(target: _F) -> _F:
        problem = _check_plain(target, repr(target))
        if problem is not None:
            raise TypeError(f"otel_perf.parser: {problem}")
        label = name or getattr(target, "__qualname__", None) or type(target).__qualname__
        return _wrap(target, _probe(label), _input_size)

    if func is not None:
        return decorate(func)
    return decorate
