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

This module says what is measured (the built-in parsers, ``OTEL_PERF_PARSERS``, ``@otel_perf.parser``) and
patches it; the per-call wrappers and the sizes they take are in ``_parse_wrappers.py``, the probes they
record into (folding, spans, the session's histograms) in ``_parse_probe.py``.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from typing import Any, Final, NamedTuple, TypeVar, overload

from otel_perf._patching import Patcher
from otel_perf._safety import log_once
from otel_perf.instrumentations import PerfInstrumentor
from otel_perf.instrumentations._parse_probe import ParseSession, end_session, probe, start_session
from otel_perf.instrumentations._parse_wrappers import input_size, wrap, wrap_argparse, wrap_source, wrap_text

__all__ = ["ParserInstrumentor", "parser"]

_F = TypeVar("_F", bound=Callable[..., Any])
_OWNER: Final = "otel_perf_parsers"


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
        wrapped = wrap(func, probe(getattr(func, "__qualname__", path)), input_size)
        return kind(wrapped) if kind is not None else wrapped

    return install


class _Builtin(NamedTuple):
    """A built-in parser function otel-perf measures."""

    name: str  # the parser's name: otel_perf.parser.name, and its word in OTEL_PERF_PARSERS_BUILTIN
    path: str  # where the function is, ``module:qualname``
    rule: str  # how its input is measured: "text" len() of the argument; "source" a file object (tell()
    #            after minus before) or text; "path" a file name (stat) or a file object; "argv" argparse
    arg: str  # the name of the argument holding the input, when it is passed by keyword


_BUILTINS: Final[tuple[_Builtin, ...]] = (
    _Builtin("json", "json:loads", "text", "s"),
    _Builtin("json", "json:load", "source", "fp"),
    _Builtin("argparse", "argparse:ArgumentParser.parse_args", "argv", "args"),
    _Builtin("argparse", "argparse:ArgumentParser.parse_known_args", "argv", "args"),
    _Builtin("shlex", "shlex:split", "text", "s"),
    *((_Builtin("tomllib", "tomllib:loads", "text", "s"), _Builtin("tomllib", "tomllib:load", "source", "fp"))
      if sys.version_info >= (3, 11) else ()),
    # tomli is tomllib's backport (otel-perf's own TOML reader on Python 3.10): the same parser name.
    _Builtin("tomllib", "tomli:loads", "text", "s"),
    _Builtin("tomllib", "tomli:load", "source", "fp"),
    _Builtin("xml", "xml.etree.ElementTree:XML", "text", "text"),
    _Builtin("xml", "xml.etree.ElementTree:fromstring", "text", "text"),
    _Builtin("xml", "xml.etree.ElementTree:parse", "path", "source"),
    _Builtin("yaml", "yaml:load", "source", "stream"),
    _Builtin("yaml", "yaml:safe_load", "source", "stream"),
)


class _Made(NamedTuple):
    """The wrapper made for one original function (kept with the original, so an id() reused by another
    object is not mistaken for it)."""

    original: Any
    wrapper: Any


def _builtin_replacement(builtin: _Builtin, made: dict[int, _Made]) -> Callable[[Any], Any]:
    """The Patcher factory of one built-in path. One wrapper per original function, so that two names of
    one function (``ElementTree.fromstring is ElementTree.XML``) stay one object, and pickle by name."""

    def install(original: Any) -> Any:
        known = made.get(id(original))
        if known is not None and known.original is original:
            return known.wrapper
        found = probe(builtin.name)
        if builtin.rule == "text":
            wrapper = wrap_text(original, found, builtin.arg)
        elif builtin.rule == "argv":
            wrapper = wrap_argparse(original, found)
        else:
            wrapper = wrap_source(original, found, builtin.arg, paths=builtin.rule == "path")
        made[id(original)] = _Made(original, wrapper)
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
    _session: ParseSession | None = None

    def _start(self, **kwargs: Any) -> None:
        session = ParseSession(self.tracer, self.meter, self.settings)
        self._session = session
        start_session(session)
        patcher = self._patcher = Patcher(_OWNER)
        made: dict[int, _Made] = {}
        selected = set(self.settings.parsers_builtin)
        for builtin in _BUILTINS:
            if builtin.name in selected:
                # In place, so that references bound before instrumentation are measured and pickle; not
                # argparse's methods: every call looks them up on the class (always measured), and a
                # trampoline on each of the two nested calls costs about 0.3% of a 10-option parse, which
                # the +3% budget does not have (benchmarks/instrumentations/test_parsers.py).
                patcher.replace(builtin.path, _builtin_replacement(builtin, made), in_place=builtin.rule != "argv")
        for path in self.settings.parsers:
            patcher.replace(path, _user_replacement(path), in_place=True)

    def _stop(self) -> None:
        if self._session is not None:
            end_session(self._session)
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
        return wrap(target, probe(label), input_size)

    if func is not None:
        return decorate(func)
    return decorate
