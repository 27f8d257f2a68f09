"""Which span is active in each thread and asyncio task: what joins profile samples to traces.

Why this module exists: a sampler sees every thread's stack, but no thread can read another thread's
OpenTelemetry context (a ``contextvars`` value). :class:`SpanTracker` watches the contexts that are made
current (``opentelemetry.context.attach``/``detach``, which every ``start_as_current_span`` and
``use_span`` goes through, and otel-perf's own fast path in ``otel_perf._context``, which pool jobs use)
and keeps, per thread and per asyncio task, the stack of contexts attached there, so that the sampler can
label each sample with the span that was active (``trace_id``, ``span_id``, and the name of the trace's
local root span).

Why a context hook rather than a span processor: the budget is 2% of an SDK span's start and end
(``benchmarks/profiling/test_span_tracking_cost.py``), 200-250 ns here. A span processor, even one whose methods do
nothing, costs the SDK three more Python calls per span (``on_start``, ``_on_ending``, ``on_end``): 2-3%
of a span by itself, 5-6% with the work. The hooks add a few operations inside the two calls a span makes
anyway: about 105 ns per span, 185 ns where they must also find the running asyncio task (below). They
also tell what a span processor cannot: which span is *current* (a span started with ``start_span`` and
never made current is not active), in whichever thread it was made current.

How it stays cheap and right:

* ``attach`` pushes the context on a stack, ``detach`` pops it. The sampler reads the top of the sampled
  thread's stack and labels the sample with its span while that span is recording (not ended). A context
  a thread enters by ``contextvars.Context.run`` (a thread pool running a job in the submitter's context)
  is not pushed: a pool thread idle between jobs has no stale span. An attach that is never detached (a
  job's context copy that is simply dropped) leaves an entry whose span has ended; a stack is cut to its
  newest half when it reaches :data:`MAX_DEPTH`.
* asyncio tasks that share a thread are told apart, so that a task's span is never attributed to another
  task running while it waits. On Python 3.12+ the sampler reads the running task's own context
  (``Task.get_context()``), which also gives a child task its creator's span. Before 3.12 a task's
  context cannot be read from outside, so once asyncio is imported the hooks key the stacks by the running
  task (a call more each, hence 185 ns).
* The stacks of threads that ended and tasks that are done are dropped when the number of stacks has
  doubled since the last look, and by :meth:`SpanTracker.prune` (once per exported profile).
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Hashable
from types import MethodType
from typing import Any

from opentelemetry import context as context_api
from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext
from opentelemetry.trace import get_current_span

from otel_perf._safety import log_once, raise_internal_errors

__all__ = ["MAX_DEPTH", "NO_SPAN", "SpanLabels", "SpanTracker", "install", "release", "tracker", "uninstall"]

#: (trace id hex, span id hex, name of the local root span): the labels of a sample taken in a span.
SpanLabels = tuple[str, str, str]
NO_SPAN: SpanLabels = ("", "", "")
#: Contexts kept per stack; at this depth the oldest half is dropped (attaches that were never detached).
MAX_DEPTH = 64
#: Parents followed at most to find a local root (a corrupt chain must not hang the sampler).
_MAX_ANCESTORS = 256

_get_ident = threading.get_ident
Attach = Callable[[Any], Any]
Detach = Callable[[Any], None]
AttachMethod = Callable[[Any, Any], Any]
DetachMethod = Callable[[Any, Any], None]


def _fault(exc: Exception) -> None:
    if raise_internal_errors():
        raise exc
    log_once(("span-tracker", type(exc).__name__),
             "otel-perf: tracking the current span failed (%s: %s); profile samples may lack span labels. "
             "Not logged again.", type(exc).__name__, exc)


def _recording(context: Any) -> Any:
    """The recording span of an OpenTelemetry context, or None."""
    if not isinstance(context, dict):  # Context is a dict; anything else is no context of ours
        return None
    try:
        span = get_current_span(context)  # type: ignore[arg-type]
        return span if span.is_recording() else None
    except Exception:  # a foreign span type: no label rather than no sample
        return None


class SpanTracker:
    """The contexts attached in each thread and asyncio task.

    Usage::

        tracker = otel_perf.profiling.spans.install()
        span = tracker.active_span(thread_ident, task)     # what a sampler asks
        otel_perf.profiling.spans.uninstall()

    ``stacks`` maps a thread ident (or an asyncio task) to the contexts attached there and not yet
    detached, outermost first. Only the owner changes its stack; readers take no lock and tolerate a
    stack changing under them.

    Args:
        set_context: what attaching does (the runtime context's ``attach``, or its ContextVar's ``set``).
        reset_context: what detaching does (``detach``, or the ContextVar's ``reset``).
        variable: the runtime context's ContextVar, when it has one (to read an asyncio task's context).
    """

    def __init__(self, set_context: Attach, reset_context: Detach, variable: Any = None) -> None:
        self.stacks: dict[Hashable, list[Any]] = {}
        self._prune_at = 64
        self._set = set_context
        self._reset = reset_context
        self._variable = variable
        # Python 3.12+ can read an asyncio task's context (Task.get_context()): the hooks need not key by
        # task there, which costs them a call each.
        self._task_contexts = variable is not None and sys.version_info >= (3, 12)
        self.keyed = False
        self.attach: Attach
        self.detach: Detach
        self.use_hooks(*self.hooks(keyed=self.needs_task_keys()))

    # --- the hot path: called for every attach and detach (twice per span made current) ------------

    def needs_task_keys(self) -> bool:
        """Whether the hooks must key by asyncio task: asyncio is imported, and tasks' contexts cannot be
        read (Python before 3.12, or a runtime context that is not a ContextVar)."""
        return "asyncio" in sys.modules and not self._task_contexts

    def use_hooks(self, attach: AttachMethod, detach: DetachMethod) -> None:
        """Make :meth:`hooks`' methods this tracker's ``attach`` and ``detach`` (bound to it)."""
        self.attach_method, self.detach_method = attach, detach
        self.attach, self.detach = MethodType(attach, self), MethodType(detach, self)

    def hooks(self, keyed: bool) -> tuple[AttachMethod, DetachMethod]:
        """The ``attach`` and ``detach`` that track, as methods (their first argument, the runtime context
        or the tracker they are bound to, is not used); keyed by thread only unless ``keyed``."""
        self.keyed = keyed
        stacks = self.stacks
        set_context = self._set
        reset = self._reset
        new_stack = self._new_stack
        get_ident = _get_ident

        if not keyed:
            def attach(_owner: Any, context: Any) -> Any:
                token = set_context(context)
                try:
                    stack = stacks.get(get_ident())
                    if stack is not None and len(stack) < MAX_DEPTH:
                        stack.append(context)
                    elif stack is None:
                        new_stack(get_ident(), context)
                    else:
                        del stack[:MAX_DEPTH // 2]
                        stack.append(context)
                except Exception as exc:  # never fail an attach: the context is set, a label may be missing
                    _fault(exc)
                return token

            def detach(_owner: Any, token: Any) -> None:
                reset(token)  # raises for a foreign token, as before (the API logs it): nothing to pop then
                try:
                    # A thread's stack stays when empty: its next span does not make a new one.
                    stack = stacks.get(get_ident())
                    if stack:
                        stack.pop()
                except Exception as exc:  # never fail a detach
                    _fault(exc)

            return attach, detach

        import asyncio as _asyncio

        running_loop = _asyncio._get_running_loop
        current_task = _asyncio.current_task

        def attach_keyed(_owner: Any, context: Any) -> Any:
            token = set_context(context)
            try:
                loop = running_loop()
                if loop is None:  # not in an event loop's thread: as attach() above
                    stack = stacks.get(get_ident())
                    if stack is not None and len(stack) < MAX_DEPTH:
                        stack.append(context)
                        return token
                    key: Hashable = get_ident()
                else:
                    key = current_task(loop) or get_ident()
                    stack = stacks.get(key)
                    if stack is not None and len(stack) < MAX_DEPTH:
                        stack.append(context)
                        return token
                if stack is None:
                    new_stack(key, context)
                else:
                    del stack[:MAX_DEPTH // 2]
                    stack.append(context)
            except Exception as exc:
                _fault(exc)
            return token

        def detach_keyed(_owner: Any, token: Any) -> None:
            reset(token)
            try:
                loop = running_loop()
                if loop is None:
                    stack = stacks.get(get_ident())
                    if stack:
                        stack.pop()
                    return
                key = current_task(loop) or get_ident()
                stack = stacks.get(key)
                if stack:
                    stack.pop()
                    if not stack:  # a task's stack goes when empty: tasks come and go by the thousand
                        stacks.pop(key, None)
            except Exception as exc:
                _fault(exc)

        return attach_keyed, detach_keyed

    def _new_stack(self, key: Hashable, context: Any) -> None:
        stacks = self.stacks
        if len(stacks) >= self._prune_at:
            self.prune()
            self._prune_at = 2 * len(stacks) + 64
        stacks[key] = [context]

    # --- what the sampler asks -----------------------------------------------------------------------

    def active_span(self, ident: int, task: Any = None) -> Any:
        """The recording span active in asyncio task ``task`` (when given), else in thread ``ident``."""
        if task is not None and self._task_contexts:
            try:
                return _recording(task.get_context().get(self._variable))
            except Exception:  # a foreign Task-like object
                return None
        stack = self.stacks.get(task if task is not None else ident)
        if not stack:
            return None
        try:
            return _recording(stack[-1])
        except IndexError:  # emptied meanwhile
            return None

    def labels(self, span: Any) -> SpanLabels:
        """``(trace_id, span_id, local root name)`` of a span (hex ids, as OTLP JSON writes them)."""
        context = span.get_span_context()
        return (format(context.trace_id, "032x"), format(context.span_id, "016x"),
                str(getattr(self.local_root(span), "name", "")))

    def local_root(self, span: Any) -> Any:
        """The outermost ancestor of ``span`` in this process that is still current somewhere here
        (``span`` itself when it has none): parents are followed while they are local (not carried in
        from another process)."""
        current = span
        index: dict[int, Any] | None = None
        for _ in range(_MAX_ANCESTORS):
            parent = getattr(current, "parent", None)
            if parent is None or parent.is_remote:
                return current
            if index is None:
                index = {}
                for stack in list(self.stacks.values()):
                    for context in list(stack):
                        if isinstance(context, dict):
                            candidate = get_current_span(context)  # type: ignore[arg-type]
                            index.setdefault(candidate.get_span_context().span_id, candidate)
            found = index.get(parent.span_id)
            if found is None or found is current:
                return current
            current = found
        return current

    # --- upkeep --------------------------------------------------------------------------------------

    def prune(self) -> int:
        """Drop the stacks of threads that ended and of asyncio tasks that are done; returns how many.

        A thread ident can be reused by a new thread, so the stack of one that ended must not stay.
        """
        alive = sys._current_frames()
        dropped = 0
        for key in list(self.stacks):
            if isinstance(key, int):
                gone = key not in alive
            else:
                done = getattr(key, "done", None)
                gone = bool(done()) if callable(done) else False
            if gone and self.stacks.pop(key, None) is not None:
                dropped += 1
        return dropped


# --- installing the hooks ----------------------------------------------------------------------------

_tracker: SpanTracker | None = None
_runtime: Any = None  # the runtime context the API had at install()
_hooked_runtime: Any = None  # what the API has instead while tracking (the default runtime context)
_own_fast_path: tuple[Attach, Detach] | None = None  # otel_perf._context's attach/detach before install
_lock = threading.Lock()
_watching_asyncio = False  # a post-import hook cannot be removed: registered once per process
_users: set[str] = set()


def tracker() -> SpanTracker | None:
    """The process's span tracker, while installed."""
    return _tracker


def _route_own_fast_path(old: tuple[Any, Any], new: tuple[Any, Any]) -> None:
    """Make otel-perf's own modules attach and detach through ``new`` instead of ``old``.

    ``otel_perf._context`` binds ``attach``/``detach`` to the ContextVar's own methods (pool jobs enter
    contexts that way, bypassing the API), and modules import those names: every ``otel_perf`` module
    holding the old objects gets the new ones, and modules imported later take them from ``_context``.
    """
    for name, module in list(sys.modules.items()):
        if module is None or not (name == "otel_perf._context" or name.startswith("otel_perf.")):
            continue
        namespace = vars(module)
        for attribute, before, after in (("attach", old[0], new[0]), ("detach", old[1], new[1])):
            if namespace.get(attribute) is before:
                namespace[attribute] = after


def _set_hooks(attach: AttachMethod, detach: DetachMethod) -> None:
    """Install the hook methods :meth:`SpanTracker.hooks` made, in the API and in otel-perf's fast path.

    The default runtime context is replaced, for the API (``opentelemetry.context._RUNTIME_CONTEXT``, which
    its ``attach``, ``detach`` and ``get_current`` read per call), by an instance of a subclass whose
    ``attach`` and ``detach`` are the hooks, sharing the original's state (its ContextVar): contexts and
    tokens stay valid across install and uninstall. Shadowing the methods with instance attributes
    instead slowed every ``get_current`` of the API too (a span makes several): 0.5-1.5 % of a span's start
    and end in interleaved blocks here, with hooks that did nothing but set and reset (budget 2 %,
    ``benchmarks/profiling/test_span_tracking_cost.py``). Another runtime
    context (``OTEL_PYTHON_CONTEXT``) keeps its instance and gets the hooks as instance attributes.
    """
    global _own_fast_path, _hooked_runtime
    assert _tracker is not None
    from otel_perf import _context

    current = (_context.attach, _context.detach)
    if _own_fast_path is None:
        _own_fast_path = current
    _tracker.use_hooks(attach, detach)
    if type(_runtime) is ContextVarsRuntimeContext:
        hooked_type = type("TrackingRuntimeContext", (ContextVarsRuntimeContext,),
                           {"attach": attach, "detach": detach, "__module__": __name__})
        hooked: Any = object.__new__(hooked_type)
        hooked.__dict__.update(_runtime.__dict__)
        if context_api._RUNTIME_CONTEXT is _runtime or context_api._RUNTIME_CONTEXT is _hooked_runtime:
            context_api._RUNTIME_CONTEXT = hooked  # type: ignore[attr-defined]
            _hooked_runtime = hooked
    else:
        _runtime.attach = _tracker.attach
        _runtime.detach = _tracker.detach
    _route_own_fast_path(current, (_tracker.attach, _tracker.detach))


def install(user: str = "default") -> SpanTracker:
    """Watch the contexts made current in this process (idempotent); returns the tracker.

    Args:
        user: who needs the tracking (``debug-server``, ``continuous``): :func:`release` by the last of
            them takes the hooks off.
    """
    global _tracker, _runtime, _watching_asyncio
    with _lock:
        _users.add(user)
        if _tracker is not None:
            return _tracker
        runtime = context_api._RUNTIME_CONTEXT
        variable = getattr(runtime, "_current_context", None)
        if type(runtime) is ContextVarsRuntimeContext and variable is not None:
            # The default runtime context: its ContextVar's own methods, one call less per span.
            tracker = SpanTracker(variable.set, variable.reset, variable)
        else:
            tracker = SpanTracker(runtime.attach, runtime.detach)
        _tracker, _runtime = tracker, runtime
        _set_hooks(tracker.attach_method, tracker.detach_method)
    if not _watching_asyncio:
        _watching_asyncio = True
        import wrapt

        # Called at once (in this thread, outside the lock) when asyncio is imported already.
        wrapt.register_post_import_hook(_asyncio_imported, "asyncio")
    return tracker


def _asyncio_imported(module: Any) -> None:
    """asyncio was imported: from now on the hooks key by asyncio task too."""
    with _lock:
        if _tracker is not None and not _tracker.keyed and _tracker.needs_task_keys():
            _set_hooks(*_tracker.hooks(keyed=True))


def release(user: str) -> None:
    """``user`` no longer needs span tracking: the hooks come off when nobody else does."""
    with _lock:
        _users.discard(user)
        last = not _users
    if last:
        uninstall()


def uninstall() -> None:
    """Restore the runtime context's own ``attach``/``detach`` and otel-perf's fast path (idempotent)."""
    global _tracker, _runtime, _hooked_runtime, _own_fast_path
    with _lock:
        _users.clear()
        if _tracker is None:
            return
        if _hooked_runtime is not None:
            # Put the original back unless someone replaced the runtime context since (theirs stays).
            if context_api._RUNTIME_CONTEXT is _hooked_runtime:
                context_api._RUNTIME_CONTEXT = _runtime  # type: ignore[attr-defined]
        else:
            for name in ("attach", "detach"):
                if _runtime.__dict__.get(name) is getattr(_tracker, name):
                    del _runtime.__dict__[name]
        if _own_fast_path is not None:
            _route_own_fast_path((_tracker.attach, _tracker.detach), _own_fast_path)
        _tracker = _runtime = _hooked_runtime = _own_fast_path = None


def _after_fork_in_child() -> None:
    # Only the forking thread goes on in the child: its contexts are still attached there.
    global _lock
    _lock = threading.Lock()
    if _tracker is not None:
        own = threading.get_ident()
        for key in list(_tracker.stacks):
            if key != own:
                _tracker.stacks.pop(key, None)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
