"""The parse wrappers: the hot path of the parsers instrumentation, and the sizes they measure.

Why this module exists: every measured parse runs one of these closures, so they hold the whole of the
instrumentation's per-call cost (benchmarks/instrumentations/test_parsers.py budgets it against the bare
parser: +15% for a 1 KB ``json.loads``, +3% for a 10-option argparse parse). Each wrapper checks the
thread's re-entrancy flag (nested parses count once, by the outermost) and ``suppress_instrumentation()``,
times the call with two ``perf_counter()`` reads and appends the duration and size to its
:class:`~otel_perf.instrumentations._parse_probe.Probe`; the probe does everything else.
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
import threading
from collections.abc import Callable, Mapping
from time import perf_counter
from typing import Any, Final, TypeVar

from otel_perf._context import SUPPRESSION_KEYS, get_current_or_suppressed
from otel_perf.instrumentations._parse_probe import FOLD_AT, UNKNOWN, Probe, record_fault

__all__ = ["input_size", "joined_length", "wrap", "wrap_argparse", "wrap_source", "wrap_text"]

_F = TypeVar("_F", bound=Callable[..., Any])

#: Per thread, ``_flag.state[0]`` is True while a measured parse runs, so nested parses are not counted.
#: A one-item list rather than an attribute: the hot path pays one thread-local lookup, not three. A plain
#: ``threading.local`` whose ``state`` a thread sets at its first parse reads faster than a subclass with
#: ``__init__`` (26 against 37 ns here), paid twice by an argparse parse (parse_args, then the nested
#: parse_known_args) within its +3% budget.
_flag = threading.local()


# --- sizes: cheap, and -1 when not cheaply knowable ---------------------------------------------------


def _text_size(args: tuple[Any, ...], kwargs: dict[str, Any], arg: str) -> int:
    """len() of the first argument, or of keyword argument ``arg``."""
    try:
        return len(args[0] if args else kwargs[arg])
    except (TypeError, KeyError):
        return UNKNOWN


def joined_length(argv: Any) -> int:
    """len(" ".join(argv)): joining 20 short strings costs a quarter of summing their len()s."""
    if not isinstance(argv, (list, tuple)):
        return UNKNOWN  # an iterator was consumed by the parse: its length is gone
    try:
        return len(" ".join(argv))
    except TypeError:
        return UNKNOWN


def _argv_size(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """argparse: length of the joined argv (``sys.argv[1:]`` when args is None); args[0] is the parser."""
    argv = args[1] if len(args) > 1 else kwargs.get("args")
    if argv is None:
        argv = sys.argv[1:]
    return joined_length(argv)


def input_size(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> int:
    """A user's parser: the first argument that is text, bytes, or a list of strings (an argv)."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, (str, bytes, bytearray)):
            return len(value)
        if isinstance(value, memoryview):
            return value.nbytes
        if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
            return joined_length(value)
    return UNKNOWN


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
    return _KNOWN, UNKNOWN


def _source_size(source: Any, start: tuple[int, int]) -> int:
    how, value = start
    if how == _KNOWN:
        return value
    try:
        if how == _PATH:
            return os.stat(source).st_size
        return int(source.tell()) - value
    except Exception:
        return UNKNOWN


# --- the wrappers ---------------------------------------------------------------------------------------
# A plain closure instead of wrapt on this hot path (STYLE.md, "Hot paths"): wrapt's FunctionWrapper costs
# about 20 bare calls, a closure about 5, and benchmarks/instrumentations/test_parsers.py holds the whole
# wrapper to +15% of a 1 KB json.loads. For the same reason the wrappers below repeat their few lines
# instead of sharing a helper call, and the text and argparse wrappers compute the size inline.
# functools.wraps passes __wrapped__, signature and docstring through.


def wrap_text(original: _F, probe: Probe, arg: str) -> _F:
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
            if len(durations) >= FOLD_AT:
                probe.fold(False)
            if elapsed > probe.min_duration or size > probe.min_bytes:
                probe.span(elapsed, end, size, None)
        except Exception as fault:
            record_fault(f"parsers: recording a {probe.name} parse", fault)
        return result

    return parse_wrapper  # type: ignore[return-value]


def wrap(original: _F, probe: Probe, size_of: Callable[[tuple[Any, ...], dict[str, Any]], int]) -> _F:
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
            if len(durations) >= FOLD_AT:
                probe.fold(False)
            if elapsed > probe.min_duration or size > probe.min_bytes:
                probe.span(elapsed, end, size, None)
        except Exception as fault:
            record_fault(f"parsers: recording a {probe.name} parse", fault)
        return result

    return parse_wrapper  # type: ignore[return-value]


_ARGPARSE_PARAMETERS: Final = ("self", "args", "namespace")


def wrap_argparse(original: _F, probe: Probe) -> _F:
    """argparse's parse_args/parse_known_args ``(self, args=None, namespace=None)``: explicit parameters
    instead of ``*args, **kwargs``, and the size inline; this parse is the tightest budget (+3%)."""
    if tuple(inspect.signature(original).parameters) != _ARGPARSE_PARAMETERS:
        return wrap(original, probe, _argv_size)  # a future signature: the general wrapper
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
            probe.failed(end - start, end, joined_length(sys.argv[1:] if args is None else args), exc)
            raise
        end = clock()
        state[0] = False
        try:
            elapsed = end - start
            argv = sys.argv[1:] if args is None else args
            size = UNKNOWN
            if isinstance(argv, (list, tuple)):  # joined_length, inlined
                try:
                    size = len(" ".join(argv))
                except TypeError:
                    pass
            durations = probe.durations
            durations.append(elapsed)
            if size >= 0:
                probe.sizes.append(size)
            if len(durations) >= FOLD_AT:
                probe.fold(False)
            if elapsed > probe.min_duration or size > probe.min_bytes:
                probe.span(elapsed, end, size, None)
        except Exception as fault:
            record_fault(f"parsers: recording a {probe.name} parse", fault)
        return result

    return parse_wrapper  # type: ignore[return-value]


def wrap_source(original: _F, probe: Probe, arg: str, paths: bool) -> _F:
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
            if len(durations) >= FOLD_AT:
                probe.fold(False)
            if elapsed > probe.min_duration or size > probe.min_bytes:
                probe.span(elapsed, end, size, None)
        except Exception as fault:
            record_fault(f"parsers: recording a {probe.name} parse", fault)
        return result

    return parse_wrapper  # type: ignore[return-value]
