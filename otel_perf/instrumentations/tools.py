"""Tool calls as GenAI ``execute_tool`` spans and the ``gen_ai.execute_tool.duration`` histogram.

Why this module exists: the plan's "tool execution p99 < 1 s" objective needs every tool call measured,
whether the tool is a function the user decorated, a block of code, or a function in someone else's
module that the user can only name by dotted path. All three produce the same span and metric
(``docs/tools.md``).

Usage::

    import otel_perf

    @otel_perf.tool(description="Search the index")
    def search(query: str) -> list[str]: ...

    with otel_perf.tool_call("fetch", call_id="call_1") as call:
        call.set_arguments({"url": url})
        call.set_result(fetch(url))

    # no code change: OTEL_PERF_TOOLS="pkg.mod:func,pkg.mod:Class.method"

The decorator only marks a function: spans and the metric are produced while :class:`ToolInstrumentor`
is instrumented (``opentelemetry-instrument``, ``otel_perf.configure()``, or ``instrument()`` by hand);
otherwise a decorated tool is a plain call (one global read of overhead), so ``uninstrument()`` and
``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=otel_perf_tools`` switch tools off.

Emits: span ``execute_tool {gen_ai.tool.name}`` (INTERNAL) with ``gen_ai.operation.name``,
``gen_ai.tool.name``, ``gen_ai.tool.type``, ``gen_ai.tool.call.id``, ``gen_ai.tool.description``,
``error.type``; ``gen_ai.tool.call.arguments``/``gen_ai.tool.call.result`` (JSON, truncated) only with
content capture on. Histogram ``gen_ai.execute_tool.duration`` (s; gen_ai.tool.name, gen_ai.tool.type,
error.type), aggregated in plain Python (``_aggregate``) and published at each collection.

Reads: ``OTEL_PERF_TOOLS``, ``OTEL_PERF_TOOL_CAPTURE_CONTENT`` (or the standard
``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT``).
"""

from __future__ import annotations

import atexit
import functools
import inspect
import itertools
import json
import logging
import sys
import threading
import types
from collections.abc import AsyncGenerator, Callable, Generator, Mapping
from contextvars import Token
from time import perf_counter
from typing import Any, TypeVar, overload

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from otel_perf import _semconv as sc
from otel_perf._aggregate import AggregatedHistogram, Series
from otel_perf._context import SUPPRESSION_KEYS, get_current_or_suppressed
from otel_perf._error_type import error_type_of
from otel_perf._inplace import replacement_of
from otel_perf._patching import _MISSING, Patcher, resolve, split_path
from otel_perf._process import is_root_process
from otel_perf._safety import guard, log_once
from otel_perf.instrumentations import PerfInstrumentor

__all__ = ["ToolCall", "ToolInstrumentor", "tool", "tool_call"]

_F = TypeVar("_F", bound=Callable[..., Any])

#: Upper bound of a captured argument or result, in characters of JSON.
MAX_CONTENT_CHARS = 4096
_MAX_ITEMS = 64  # items of a list or dict kept before the JSON is built (bounds the cost, too)
_MAX_DEPTH = 6
_TRUNCATED = "...(truncated)"

_DURATION_SPEC = sc.metric("gen_ai.execute_tool.duration")
_VARIABLE = "OTEL_PERF_TOOLS"


class _Active:
    """What a running :class:`ToolInstrumentor` provides to tools: read once per call, replaced whole."""

    __slots__ = ("capture", "histogram", "tracer")

    def __init__(self, tracer: Tracer, histogram: AggregatedHistogram, capture: bool) -> None:
        self.tracer = tracer
        self.histogram = histogram
        self.capture = capture


# The instrumentation in force, or None: tools are plain calls then.
_active: _Active | None = None


def _in_force() -> _Active | None:
    """The instrumentation in force, unless instrumentation is suppressed here (``suppress_instrumentation()``:
    a tool the SDK's exporters call gets no span and no measurement)."""
    active = _active
    if active is None:
        return None
    context = get_current_or_suppressed()
    if context and (context.get(SUPPRESSION_KEYS[0]) or context.get(SUPPRESSION_KEYS[1])):
        return None
    return active


def _error_type(exc: BaseException) -> str:
    return error_type_of(exc)


# --- content capture ---------------------------------------------------------------------------------


def _bounded(value: Any, depth: int = 0) -> Any:
    """A JSON-ready copy of ``value`` with bounded size, depth and cost; never raises."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return value if len(value) <= MAX_CONTENT_CHARS else value[:MAX_CONTENT_CHARS] + _TRUNCATED
    if depth >= _MAX_DEPTH:
        return _safe_repr(value)
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for i, (key, item) in enumerate(value.items()):
            if i >= _MAX_ITEMS:
                out[_TRUNCATED] = len(value) - _MAX_ITEMS
                break
            out[key if isinstance(key, str) else _safe_repr(key)] = _bounded(item, depth + 1)
        return out
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [_bounded(item, depth + 1) for item in itertools.islice(value, _MAX_ITEMS)]
        if len(value) > _MAX_ITEMS:
            items.append(_TRUNCATED)
        return items
    if isinstance(value, (bytes, bytearray)):
        return _safe_repr(bytes(value[:MAX_CONTENT_CHARS]))
    return _safe_repr(value)


def _safe_repr(value: Any) -> str:
    try:
        text = repr(value)
    except Exception:
        return f"<unrepresentable {type(value).__name__}>"
    return text if len(text) <= MAX_CONTENT_CHARS else text[:MAX_CONTENT_CHARS] + _TRUNCATED


def to_json(value: Any) -> str:
    """``value`` as JSON of at most :data:`MAX_CONTENT_CHARS` (plus a marker); never raises."""
    try:
        text = json.dumps(_bounded(value), ensure_ascii=False, allow_nan=True)
    except Exception:
        text = json.dumps(_safe_repr(value), ensure_ascii=False)
    return text if len(text) <= MAX_CONTENT_CHARS else text[:MAX_CONTENT_CHARS] + _TRUNCATED


# --- one tool, and one call of it --------------------------------------------------------------------


class _Tool:
    """A tool's fixed facts: name, type, description, span name, start attributes, argument names."""

    __slots__ = (
        "_series",
        "_series_of",
        "attributes",
        "description",
        "name",
        "signature",
        "span_name",
        "type",
    )

    def __init__(self, name: str, type_: str, description: str | None, fn: Callable[..., Any] | None) -> None:
        self.name = name
        self.type = type_
        self.description = description
        self.span_name = f"execute_tool {name}"
        attributes: dict[str, Any] = {
            sc.GEN_AI_OPERATION_NAME: sc.GEN_AI_OPERATION_EXECUTE_TOOL,
            sc.GEN_AI_TOOL_NAME: name,
            sc.GEN_AI_TOOL_TYPE: type_,
        }
        if description:
            attributes[sc.GEN_AI_TOOL_DESCRIPTION] = description
        self.attributes = attributes
        self.signature: inspect.Signature | None = None
        if fn is not None:
            try:
                self.signature = inspect.signature(fn)
            except (TypeError, ValueError):
                pass  # builtins without a signature: arguments are captured positionally
        self._series: Series | None = None
        self._series_of: _Active | None = None

    def series(self, active: _Active) -> Series:
        # The series of the success case, cached per instrumentation (a new one starts a new histogram).
        if self._series_of is not active:
            self._series = active.histogram.series({sc.GEN_AI_TOOL_NAME: self.name,
                                                    sc.GEN_AI_TOOL_TYPE: self.type})
            self._series_of = active
        assert self._series is not None
        return self._series

    def arguments_json(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str:
        if self.signature is not None:
            try:
                bound = self.signature.bind_partial(*args, **kwargs)
            except TypeError:
                pass  # the call itself will fail the same way; record what was passed
            else:
                arguments = dict(bound.arguments)
                first = next(iter(self.signature.parameters), None)
                if first in ("self", "cls"):
                    arguments.pop(first, None)
                return to_json(arguments)
        return to_json({"args": list(args), "kwargs": dict(kwargs)})


class _Call:
    """One running tool call: its span, the attached context, its start time."""

    __slots__ = ("active", "span", "start", "token", "tool")

    def __init__(self, active: _Active, tool: _Tool, span: Span, token: Token[Context] | None) -> None:
        self.active = active
        self.tool = tool
        self.span = span
        self.token = token
        self.start = perf_counter()


@guard
def _begin(active: _Active, tool: _Tool, args: tuple[Any, ...] | None = None,
           kwargs: Mapping[str, Any] | None = None, call_id: str | None = None) -> _Call:
    span = active.tracer.start_span(tool.span_name, kind=SpanKind.INTERNAL, attributes=tool.attributes)
    if call_id is not None:
        span.set_attribute(sc.GEN_AI_TOOL_CALL_ID, call_id)
    if active.capture and args is not None:
        span.set_attribute(sc.GEN_AI_TOOL_CALL_ARGUMENTS, tool.arguments_json(args, kwargs or {}))
    token = otel_context.attach(trace.set_span_in_context(span))
    return _Call(active, tool, span, token)


@guard
def _finish(call: _Call, exc: BaseException | None, result: Any = None, has_result: bool = False) -> None:
    duration = perf_counter() - call.start
    if call.token is not None:
        otel_context.detach(call.token)
    span = call.span
    if exc is None:
        if has_result and call.active.capture:
            span.set_attribute(sc.GEN_AI_TOOL_CALL_RESULT, to_json(result))
        call.tool.series(call.active).record(duration)
    else:
        error_type = _error_type(exc)
        span.set_attribute(sc.ERROR_TYPE, error_type)
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        call.active.histogram.record(duration, {sc.GEN_AI_TOOL_NAME: call.tool.name,
                                                sc.GEN_AI_TOOL_TYPE: call.tool.type,
                                                sc.ERROR_TYPE: error_type})
    span.end()


# --- wrappers by kind of callable --------------------------------------------------------------------


def _wrap_function(fn: Callable[..., Any], tool: _Tool) -> Callable[..., Any]:
    # A plain closure, not wrapt: the benchmark (benchmarks/instrumentations/test_tools.py) budgets a
    # decorated tool at one span plus half a Histogram.record, and wrapt costs ~0.9 us per call here.
    @functools.wraps(fn)
    def tool_wrapper(*args: Any, **kwargs: Any) -> Any:
        active = _in_force()
        if active is None:
            return fn(*args, **kwargs)
        call = _begin(active, tool, args, kwargs)
        if call is None:  # our fault, logged once: run the tool untraced
            return fn(*args, **kwargs)
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            _finish(call, exc)
            raise
        _finish(call, None, result, True)
        return result

    return tool_wrapper


def _wrap_coroutine_function(fn: Callable[..., Any], tool: _Tool) -> Callable[..., Any]:
    @functools.wraps(fn)
    async def tool_wrapper(*args: Any, **kwargs: Any) -> Any:
        active = _in_force()
        if active is None:
            return await fn(*args, **kwargs)
        call = _begin(active, tool, args, kwargs)
        if call is None:
            return await fn(*args, **kwargs)
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            _finish(call, exc)
            raise
        _finish(call, None, result, True)
        return result

    return tool_wrapper


def _wrap_generator_function(fn: Callable[..., Any], tool: _Tool) -> Callable[..., Any]:
    # The wrapper is itself a generator function (inspect.isgeneratorfunction stays true), so the span
    # starts when iteration starts and ends when the generator finishes, fails or is closed. Each step
    # of the inner generator runs with the tool's span current; the consumer's code between steps does
    # not. send(), throw(), close() and the return value are forwarded as ``yield from`` would.
    @functools.wraps(fn)
    def tool_wrapper(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
        active = _in_force()
        gen = fn(*args, **kwargs)
        if active is None:
            return (yield from gen)
        call = _begin(active, tool, args, kwargs)
        if call is None:
            return (yield from gen)
        otel_context.detach(call.token)  # re-attached around each step below
        call.token = None
        step_context = trace.set_span_in_context(call.span)
        to_send: Any = None
        to_throw: BaseException | None = None
        try:
            while True:
                token = otel_context.attach(step_context)
                try:
                    if to_throw is not None:
                        thrown, to_throw = to_throw, None
                        item = gen.throw(thrown)
                    else:
                        item = gen.send(to_send)
                except StopIteration as stop:
                    result = stop.value
                    break
                finally:
                    otel_context.detach(token)
                try:
                    to_send = yield item
                except GeneratorExit:
                    gen.close()
                    raise
                except BaseException as exc:
                    to_throw, to_send = exc, None
        except GeneratorExit:
            _finish(call, None)  # closed early by the consumer: not an error
            raise
        except BaseException as exc:
            _finish(call, exc)
            raise
        _finish(call, None)
        return result

    return tool_wrapper


def _wrap_async_generator_function(fn: Callable[..., Any], tool: _Tool) -> Callable[..., Any]:
    @functools.wraps(fn)
    async def tool_wrapper(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, Any]:
        active = _in_force()
        agen = fn(*args, **kwargs)
        call = _begin(active, tool, args, kwargs) if active is not None else None
        step_context = None
        if call is not None:
            otel_context.detach(call.token)
            call.token = None
            step_context = trace.set_span_in_context(call.span)
        to_send: Any = None
        to_throw: BaseException | None = None
        try:
            while True:
                token = otel_context.attach(step_context) if step_context is not None else None
                try:
                    if to_throw is not None:
                        thrown, to_throw = to_throw, None
                        item = await agen.athrow(thrown)
                    else:
                        item = await agen.asend(to_send)
                except StopAsyncIteration:
                    break
                finally:
                    if token is not None:
                        otel_context.detach(token)
                try:
                    to_send = yield item
                except GeneratorExit:
                    await agen.aclose()
                    raise
                except BaseException as exc:
                    to_throw, to_send = exc, None
        except GeneratorExit:
            if call is not None:
                _finish(call, None)
            raise
        except BaseException as exc:
            if call is not None:
                _finish(call, exc)
            raise
        if call is not None:
            _finish(call, None)

    return tool_wrapper


def _make_tool(fn: Any, name: str | None, type_: str, description: str | None) -> Any:
    """Wrap ``fn`` (function, method, classmethod or staticmethod object) as a tool."""
    if isinstance(fn, (classmethod, staticmethod)):
        return type(fn)(_make_tool(fn.__func__, name, type_, description))
    if isinstance(fn, type):
        raise TypeError(f"otel_perf.tool decorates functions and methods, not classes: {fn.__qualname__}")
    if not callable(fn):
        raise TypeError(f"otel_perf.tool expected a callable, got {type(fn).__qualname__}")
    tool_name = name or getattr(fn, "__name__", None) or type(fn).__name__
    spec = _Tool(tool_name, type_, description, fn)
    if inspect.isasyncgenfunction(fn):
        wrapper = _wrap_async_generator_function(fn, spec)
    elif inspect.iscoroutinefunction(fn):
        wrapper = _wrap_coroutine_function(fn, spec)
    elif inspect.isgeneratorfunction(fn):
        wrapper = _wrap_generator_function(fn, spec)
    else:
        wrapper = _wrap_function(fn, spec)
    wrapper._otel_perf_tool = tool_name  # type: ignore[attr-defined]
    return wrapper


def _is_tool(obj: Any) -> bool:
    """Whether ``obj`` (or the function inside a method/classmethod) is already one of our tools, as a
    wrapper or as a function patched in place."""
    function = getattr(obj, "__func__", obj)
    return getattr(replacement_of(function) or function, "_otel_perf_tool", None) is not None


@overload
def tool(fn: _F, /) -> _F: ...


@overload
def tool(
    fn: None = None, /, *, name: str | None = None, type: str = "function", description: str | None = None
) -> Callable[[_F], _F]: ...


def tool(
    fn: Any = None, /, *, name: str | None = None, type: str = "function",
    description: str | None = None,
) -> Any:
    """Mark a function as a tool: each call becomes an ``execute_tool {name}`` span and a duration.

    Works on functions, async functions, generators and async generators (the span covers the whole
    iteration), methods, classmethods and staticmethods (above or below ``@classmethod``). Return
    values, exceptions, signature, docstring and pickling are those of the function.

    Args:
        fn: the function (when used as ``@tool`` without parentheses).
        name: ``gen_ai.tool.name`` (default: the function's ``__name__``).
        type: ``gen_ai.tool.type``: ``function``, ``extension`` or ``datastore``.
        description: ``gen_ai.tool.description`` (not set when None).

    Returns:
        The wrapped function, or a decorator when called with keywords only.

    Raises:
        TypeError: the decorated object is a class or not callable.
    """
    if fn is not None:
        return _make_tool(fn, name, type, description)
    return lambda f: _make_tool(f, name, type, description)


class ToolCall:
    """One tool call in a ``with`` (or ``async with``) block; see :func:`tool_call`.

    ``set_arguments``/``set_result`` record content only when content capture is on.
    """

    __slots__ = ("_call", "_tool", "call_id")

    def __init__(self, tool: _Tool, call_id: str | None) -> None:
        self._tool = tool
        self.call_id = call_id
        self._call: _Call | None = None

    @property
    def name(self) -> str:
        return self._tool.name

    @property
    def span(self) -> Span:
        """The call's span (a non-recording span when tools are not instrumented)."""
        return self._call.span if self._call is not None else trace.INVALID_SPAN

    def set_arguments(self, arguments: Any) -> None:
        """Record the call's arguments (JSON, truncated) when content capture is on."""
        call = self._call
        if call is not None and call.active.capture:
            call.span.set_attribute(sc.GEN_AI_TOOL_CALL_ARGUMENTS, to_json(arguments))

    def set_result(self, result: Any) -> None:
        """Record the call's result (JSON, truncated) when content capture is on."""
        call = self._call
        if call is not None and call.active.capture:
            call.span.set_attribute(sc.GEN_AI_TOOL_CALL_RESULT, to_json(result))

    def __enter__(self) -> ToolCall:
        active = _in_force()
        if active is not None and self._call is None:
            self._call = _begin(active, self._tool, call_id=self.call_id)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: types.TracebackType | None) -> None:
        call, self._call = self._call, None
        if call is not None:
            _finish(call, exc)

    async def __aenter__(self) -> ToolCall:
        return self.__enter__()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: types.TracebackType | None) -> None:
        self.__exit__(exc_type, exc, tb)


def tool_call(name: str, call_id: str | None = None, *, type: str = "function",
              description: str | None = None) -> ToolCall:
    """A tool call for code that is not a function: ``with otel_perf.tool_call("fetch") as call:``.

    Args:
        name: ``gen_ai.tool.name``.
        call_id: ``gen_ai.tool.call.id`` (e.g. the id the model gave the call).
        type: ``gen_ai.tool.type``.
        description: ``gen_ai.tool.description``.

    Returns:
        A :class:`ToolCall` context manager; an exception leaving the block marks the call as failed
        and propagates unchanged.
    """
    return ToolCall(_Tool(name, type, description, None), call_id)


# --- OTEL_PERF_TOOLS ---------------------------------------------------------------------------------


def _tool_from_path(original: Any, path: str) -> Any:
    """The replacement installed for a callable named in ``OTEL_PERF_TOOLS`` (Patcher factory)."""
    if isinstance(original, types.MethodType) and isinstance(original.__self__, type):
        # An inherited classmethod, seen bound to its class: install a classmethod on the subclass.
        return classmethod(_make_tool(original.__func__, None, "function", None))
    return _make_tool(original, None, "function", None)


def _not_a_tool(target: Any) -> str | None:
    """Why the object a path names cannot be a tool, or None when it can."""
    raw = target.original if target.original is not _MISSING else target.current
    if isinstance(raw, (classmethod, staticmethod)):
        raw = raw.__func__
    if isinstance(raw, type):
        return "is a class; name a function or a method instead"
    if not callable(raw):
        return f"is not callable (it is a {type(raw).__qualname__})"
    return None


class ToolInstrumentor(PerfInstrumentor):
    """Tool calls: ``@otel_perf.tool``, ``otel_perf.tool_call(...)`` and ``OTEL_PERF_TOOLS`` paths.

    Usage::

        ToolInstrumentor().instrument(tracer_provider=tp, meter_provider=mp)
        ...
        ToolInstrumentor().uninstrument()

    Emits the ``execute_tool {gen_ai.tool.name}`` span and the ``gen_ai.execute_tool.duration``
    histogram; reads ``OTEL_PERF_TOOLS`` and ``OTEL_PERF_TOOL_CAPTURE_CONTENT``. A malformed
    ``OTEL_PERF_TOOLS`` entry is reported when the settings are read; a path whose module is never
    imported is reported once at shutdown (a warning in the root process of a process tree, DEBUG in its
    children, which inherit the variable); a path to something that cannot be a tool is reported once
    when its module is imported.
    """

    _patcher: Patcher | None = None
    _histogram: AggregatedHistogram | None = None

    def _start(self, **kwargs: Any) -> None:
        global _active
        histogram = AggregatedHistogram(_DURATION_SPEC.name, _DURATION_SPEC.unit, _DURATION_SPEC.description,
                                        sc.TOOL_DURATION_BOUNDARIES)
        histogram.bind(self.meter)
        self._histogram = histogram
        _active = _Active(self.tracer, histogram, self.settings.tool_capture_content)
        self._patcher = Patcher("otel_perf_tools")
        self._waiting: set[str] = set()
        self._lock = threading.Lock()
        for path in self.settings.tools:
            self._add_path(path)
        if self._waiting:
            _register_exit_report(self)

    def _stop(self) -> None:
        global _active
        _active = None
        if self._patcher is not None:
            self._patcher.unpatch_all()
        self._report_unresolved()
        if self._histogram is not None:
            self._histogram.unbind(self.meter)
            self._histogram = None

    def _add_path(self, path: str) -> None:
        module_name, _ = split_path(path)
        if module_name in sys.modules:
            self._patch_now(path)
            return
        with self._lock:
            self._waiting.add(path)

        def on_import(module: types.ModuleType) -> None:
            with self._lock:
                if path not in self._waiting:
                    return
                self._waiting.discard(path)
            self._patch_now(path)

        assert self._patcher is not None
        self._patcher.when_imported(module_name, on_import)  # runs only while this patcher is on

    @guard
    def _patch_now(self, path: str) -> None:
        try:
            target = resolve(path)
        except (ImportError, AttributeError) as exc:
            log_once(("otel_perf_tools", "unresolved", path),
                     "otel-perf: %s names %s, which does not exist (%s); it is not treated as a tool",
                     _VARIABLE, path, exc)
            return
        if _is_tool(target.current):
            return  # decorated already, or inherited from a class whose method is patched: one span per call
        reason = _not_a_tool(target)
        if reason is not None:
            log_once(("otel_perf_tools", "not-callable", path),
                     "otel-perf: %s names %s, which %s; it is not treated as a tool", _VARIABLE, path, reason)
            return
        assert self._patcher is not None
        self._patcher.replace(path, functools.partial(_tool_from_path, path=path), lazy=False, in_place=True)

    def _report_unresolved(self) -> None:
        lock = getattr(self, "_lock", None)
        if lock is None:
            return
        with lock:
            waiting = sorted(self._waiting)
            self._waiting.clear()
        # Children of an instrumented program inherit OTEL_PERF_TOOLS but are mostly other programs that
        # never import the user's tool modules: only the root process warns, the others log at DEBUG.
        level = logging.WARNING if is_root_process() else logging.DEBUG
        for path in waiting:
            log_once(("otel_perf_tools", "never-imported", path),
                     "otel-perf: %s names %s, but module %s was never imported; it was not treated as a tool",
                     _VARIABLE, path, split_path(path)[0], level=level)


_exit_reporters: list[ToolInstrumentor] = []


def _register_exit_report(instrumentor: ToolInstrumentor) -> None:
    # The launcher never uninstruments: report paths that never resolved when the program exits.
    if not _exit_reporters:
        atexit.register(_report_at_exit)
    if instrumentor not in _exit_reporters:
        _exit_reporters.append(instrumentor)


def _report_at_exit() -> None:
    for instrumentor in list(_exit_reporters):
        try:
            instrumentor._report_unresolved()
        except Exception:  # at exit nothing may raise; the report is best effort
            logging.getLogger("otel_perf").debug("otel-perf: exit report failed", exc_info=True)
    _exit_reporters.clear()
