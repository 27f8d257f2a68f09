"""Span tracking: samples taken in a span carry its ids and its trace's local root name, per thread and per
asyncio task; samples outside spans carry none; the hooks never break attach/detach and come off cleanly.

Ticks are driven by hand on threads parked inside known spans, so nothing depends on timing.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import os
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import context as context_api
from opentelemetry import trace

from otel_perf import _context
from otel_perf.profiling import pprof, spans
from otel_perf.profiling.sampler import Sampler
from otel_perf.profiling.snapshot import encode_pprof


@pytest.fixture
def tracker(tracer_provider: Any) -> Iterator[spans.SpanTracker]:
    """Span tracking on (always taken off again)."""
    installed = spans.install()
    try:
        yield installed
    finally:
        spans.uninstall()


def labels_by_thread(sampler: Sampler) -> dict[str, set[tuple[str, str, str]]]:
    """thread name -> the (trace_id, span_id, span_name) labels of its samples ("" where absent)."""
    out: dict[str, set[tuple[str, str, str]]] = {}
    for sample in pprof.decode(encode_pprof(sampler.take())).samples:
        labels = {label.key: label.value for label in sample.labels}
        out.setdefault(labels["thread"], set()).add(
            (labels.get("trace_id", ""), labels.get("span_id", ""), labels.get("span_name", "")))
    return out


def hex_ids(span: Any) -> tuple[str, str]:
    context = span.get_span_context()
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


def park_in_spans(names: list[str], ready: threading.Event, release: threading.Event,
                  found: list[Any]) -> None:
    """Open nested spans ``names`` (outermost first) and wait inside the innermost one."""
    tracer = trace.get_tracer("test")
    if not names:
        found.append(trace.get_current_span())
        ready.set()
        release.wait(10)
        return
    with tracer.start_as_current_span(names[0]):
        park_in_spans(names[1:], ready, release, found)


def test_samples_in_a_span_carry_its_ids_and_the_local_root_name(tracker: spans.SpanTracker) -> None:
    """The innermost active span labels the sample; span_name is the outermost span of the trace here."""
    ready, release, found = threading.Event(), threading.Event(), []
    thread = threading.Thread(target=park_in_spans, args=(["request", "parse", "tokenize"], ready, release,
                                                         found), name="in-span")
    idle = threading.Thread(target=release.wait, args=(10,), name="no-span")
    thread.start()
    idle.start()
    try:
        assert ready.wait(5)
        sampler = Sampler("wall", exclude={threading.get_ident()})
        sampler._tick(10_000_000)
        by_thread = labels_by_thread(sampler)
    finally:
        release.set()
        thread.join(5)
        idle.join(5)
    trace_id, span_id = hex_ids(found[0])
    assert by_thread["in-span"] == {(trace_id, span_id, "request")}
    assert by_thread["no-span"] == {("", "", "")}  # outside any span: no span labels at all


def test_a_span_made_current_in_another_thread_labels_that_thread_only(tracker: spans.SpanTracker) -> None:
    """Started in one thread, made current (use_span) in another: the samples of the thread running in
    it carry it; the thread that started it but is not in it carries nothing."""
    tracer = trace.get_tracer("test")
    span = tracer.start_span("handed-over")
    ready, release = threading.Event(), threading.Event()

    def run_in_span() -> None:
        with trace.use_span(span, end_on_exit=False):
            ready.set()
            release.wait(10)

    thread = threading.Thread(target=run_in_span, name="worker")
    thread.start()
    try:
        assert ready.wait(5)
        sampler = Sampler("wall")
        sampler._tick(10_000_000)
        by_thread = labels_by_thread(sampler)
    finally:
        release.set()
        thread.join(5)
        span.end()
    assert by_thread["worker"] == {(*hex_ids(span), "handed-over")}
    assert by_thread["MainThread"] == {("", "", "")}


def test_an_ended_span_that_is_still_current_gives_no_labels(tracker: spans.SpanTracker) -> None:
    """Only a recording span labels samples: once ended, it no longer does, even if still current."""
    tracer = trace.get_tracer("test")
    ident = threading.get_ident()
    with tracer.start_as_current_span("short") as span:
        assert tracker.active_span(ident) is span
        span.end()
        assert tracker.active_span(ident) is None
    assert tracker.active_span(ident) is None


def test_pool_jobs_carry_their_job_span_and_an_idle_pool_thread_carries_none(
        tracker: spans.SpanTracker, tracer_provider: Any, meter_provider: Any) -> None:
    """otel-perf's pool instrumentation enters job contexts through its own fast path (not the API): the
    job span still labels the job's samples, and a pool thread waiting for work between jobs is not
    left with the last job's span (the job context was a copy, never detached)."""
    from otel_perf._config import load_settings
    from otel_perf.instrumentations.workers import WorkerPoolInstrumentor

    instrumentor = WorkerPoolInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider,
                            settings=load_settings())
    try:
        in_job, release = threading.Event(), threading.Event()
        seen: list[Any] = []

        def job() -> None:
            seen.append((trace.get_current_span(), threading.get_ident()))
            in_job.set()
            release.wait(10)

        with cf.ThreadPoolExecutor(1, thread_name_prefix="labelled") as pool:
            future = pool.submit(job)
            assert in_job.wait(5)
            sampler = Sampler("wall")
            sampler._tick(10_000_000)
            during = labels_by_thread(sampler)
            release.set()
            future.result(5)
            for _ in range(20):  # a few more jobs through the same thread, then idle
                pool.submit(sum, range(10)).result(5)
            time.sleep(0.05)
            sampler._tick(10_000_000)
            after = labels_by_thread(sampler)
            # 21 jobs attached a context copy each and never detached it: the stack stays bounded
            assert len(tracker.stacks.get(seen[0][1], [])) <= spans.MAX_DEPTH
    finally:
        instrumentor.uninstrument()
    (pool_thread,) = [name for name in during if name.startswith("labelled")]
    job_span = seen[0][0]
    assert job_span.get_span_context().is_valid
    trace_id, span_id = hex_ids(job_span)
    assert during[pool_thread] == {(trace_id, span_id, job_span.name)}
    assert after[pool_thread] == {("", "", "")}


def test_asyncio_tasks_sharing_a_thread_each_get_their_own_span(tracker: spans.SpanTracker) -> None:
    """Two tasks interleave on one event loop, each inside its own span: whichever task runs, the
    samples carry that task's span, never the other's (nor the span of a task waiting meanwhile)."""
    tracer = trace.get_tracer("test")
    observed: list[tuple[str, Any, Any, str]] = []

    def look(name: str, span: Any) -> None:
        active = tracker.active_span(threading.get_ident(), asyncio.current_task())
        observed.append((name, span, active, tracker.labels(active)[2] if active is not None else ""))

    async def task(name: str) -> None:
        with tracer.start_as_current_span(name) as span:
            for _ in range(3):
                await asyncio.sleep(0.001)
                look(name, span)

    async def main() -> None:
        with tracer.start_as_current_span("main") as root:
            await asyncio.gather(task("a"), task("b"))
            look("main", root)

    asyncio.run(main())
    assert {name for name, _, _, _ in observed} == {"a", "b", "main"}
    for name, span, active, root in observed:
        assert active is span, name
        assert root == "main"  # the trace's local root, also for the tasks' spans


def test_samples_of_an_asyncio_task_carry_its_span_name_label() -> None:
    """The sampler's own view: a task burning CPU inside its span, in a loop thread, is labelled with it."""
    spans.install()
    from opentelemetry.sdk.trace import TracerProvider

    tracer = TracerProvider().get_tracer("test")
    stop, inside = threading.Event(), threading.Event()

    async def crunch() -> None:
        with tracer.start_as_current_span("crunching"):
            inside.set()
            while not stop.is_set():
                sum(i * i for i in range(300_000))
                await asyncio.sleep(0)

    thread = threading.Thread(target=lambda: asyncio.run(crunch()), name="loop-thread")
    thread.start()
    try:
        assert inside.wait(5)
        sampler = Sampler("cpu", hz=100)
        data = sampler.run(0.6)
    finally:
        stop.set()
        thread.join(5)
        spans.uninstall()
    names = {label.value for s in pprof.decode(data).samples for label in s.labels if label.key == "span_name"}
    assert "crunching" in names


def test_uninstall_restores_the_runtime_context_and_the_pool_fast_path(tracer_provider: Any) -> None:
    """install() twice is harmless; uninstall() puts back the runtime context's own methods and the
    ContextVar methods otel_perf._context (and modules importing from it) use."""
    import otel_perf.instrumentations._workers_trampoline as run

    runtime = context_api._RUNTIME_CONTEXT
    fast = (_context.attach, _context.detach, run.attach, run.detach)
    first = spans.install()
    assert spans.install() is first
    try:
        hooked = context_api._RUNTIME_CONTEXT
        assert hooked is not runtime and type(hooked).attach is first.attach_method
        assert _context.attach is first.attach and run.attach is first.attach
        # The same ContextVar: what was current before install is current through the hooked runtime.
        assert hooked.get_current() is runtime.get_current()
    finally:
        spans.uninstall()
    spans.uninstall()
    assert context_api._RUNTIME_CONTEXT is runtime
    assert "attach" not in vars(runtime) and "detach" not in vars(runtime)
    assert (_context.attach, _context.detach, run.attach, run.detach) == fast
    assert spans.tracker() is None


def test_tracking_faults_never_fail_attach_or_detach(tracker: spans.SpanTracker,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A fault inside the hooks is logged once and swallowed outside tests: the context is still set and
    reset, and the span works."""
    from otel_perf import _safety

    monkeypatch.setattr(_safety, "_raise_internal_errors", False)
    monkeypatch.setattr(tracker, "stacks", None)  # every lookup now fails
    spans._set_hooks(*tracker.hooks(tracker.keyed))
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("still-works") as span:
        assert trace.get_current_span() is span
    assert trace.get_current_span() is not span


def test_a_stack_never_detached_stays_bounded(tracker: spans.SpanTracker) -> None:
    """Contexts attached and never detached (a dropped context copy) cannot grow a stack without end."""
    tracer = trace.get_tracer("test")
    for _ in range(5 * spans.MAX_DEPTH):
        span = tracer.start_span("leaked")
        context_api.attach(trace.set_span_in_context(span))
        span.end()
    assert len(tracker.stacks[threading.get_ident()]) <= spans.MAX_DEPTH


def test_stacks_of_ended_threads_are_pruned(tracker: spans.SpanTracker) -> None:
    """A thread that ended with a context still attached leaves a stack; prune() drops it."""
    def leave_attached() -> None:
        context_api.attach(trace.set_span_in_context(trace.get_tracer("t").start_span("never-detached")))

    thread = threading.Thread(target=leave_attached)
    thread.start()
    thread.join(5)
    assert thread.ident in tracker.stacks
    assert tracker.prune() >= 1
    assert thread.ident not in tracker.stacks


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_forked_child_keeps_only_the_forking_threads_spans(tracker: spans.SpanTracker) -> None:
    """After fork only the forking thread exists: its span stays active in the child, other threads'
    stacks are gone. (A thread the child starts, such as the SDK's batch processor restarting its worker
    after fork, may reuse a vanished thread's ident: what matters is that no span of the parent's other
    thread is current anywhere in the child.)"""
    ready, release = threading.Event(), threading.Event()
    other = threading.Thread(target=park_in_spans, args=(["elsewhere"], ready, release, []))
    other.start()
    assert ready.wait(5)
    tracer = trace.get_tracer("test")
    read, write = os.pipe()
    try:
        with tracer.start_as_current_span("forking"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                pid = os.fork()
            if pid == 0:  # pragma: no cover - child
                active = tracker.active_span(threading.get_ident())
                current_anywhere = {getattr(tracker.active_span(key), "name", None) for key in list(tracker.stacks)}
                ok = active is not None and active.name == "forking" and "elsewhere" not in current_anywhere
                os.write(write, b"1" if ok else b"0")
                os._exit(0)
        os.close(write)
        assert os.read(read, 1) == b"1"
        os.waitpid(pid, 0)
    finally:
        os.close(read)
        release.set()
        other.join(5)


@pytest.mark.skipif(sys.version_info < (3, 12), reason="Task.get_context() is Python 3.12+")
def test_a_child_task_without_spans_of_its_own_carries_its_creators_span(tracker: spans.SpanTracker) -> None:
    """Python 3.12+: a task inherits its creator's context; its samples carry the creator's span."""
    tracer = trace.get_tracer("test")
    seen: list[tuple[Any, Any]] = []

    async def child(parent: Any) -> None:
        await asyncio.sleep(0)
        seen.append((parent, tracker.active_span(threading.get_ident(), asyncio.current_task())))

    async def main() -> None:
        with tracer.start_as_current_span("creator") as span:
            await asyncio.create_task(child(span))

    asyncio.run(main())
    ((parent, active),) = seen
    assert active is parent


def test_tracking_stays_on_until_its_last_user_releases_it(tracer_provider: Any) -> None:
    """The debug server and continuous profiling both need tracking: stopping one keeps it for the other."""
    runtime = context_api._RUNTIME_CONTEXT
    try:
        spans.install("debug-server")
        spans.install("continuous")
        spans.release("continuous")
        assert spans.tracker() is not None and context_api._RUNTIME_CONTEXT is not runtime
        spans.release("debug-server")
        assert spans.tracker() is None and context_api._RUNTIME_CONTEXT is runtime
    finally:
        spans.uninstall()


class _OtherRuntime:
    """A runtime context of another kind (what OTEL_PYTHON_CONTEXT can select), keeping its state itself."""

    def __init__(self) -> None:
        self._local = threading.local()

    def attach(self, context: Any) -> object:
        previous = getattr(self._local, "context", context_api.Context())
        self._local.context = context
        return previous

    def detach(self, token: object) -> None:
        self._local.context = token

    def get_current(self) -> Any:
        return getattr(self._local, "context", context_api.Context())


def test_another_runtime_context_is_tracked_in_place_and_given_back(tracer_provider: Any,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A runtime context that is not the default one keeps its own instance (and state): the hooks go on
    it as attributes, spans are tracked through them, and uninstall takes them off."""
    other = _OtherRuntime()
    monkeypatch.setattr(context_api, "_RUNTIME_CONTEXT", other)
    installed = spans.install()
    try:
        assert context_api._RUNTIME_CONTEXT is other and vars(other)["attach"] == installed.attach
        with trace.get_tracer("test").start_as_current_span("in-other-runtime") as span:
            assert trace.get_current_span() is span
            assert installed.active_span(threading.get_ident()) is span
        assert trace.get_current_span() is not span
    finally:
        spans.uninstall()
    assert context_api._RUNTIME_CONTEXT is other and "attach" not in vars(other) and "detach" not in vars(other)


def test_uninstall_leaves_a_runtime_context_someone_else_set_meanwhile(tracer_provider: Any) -> None:
    """A program (or another library) that replaced the runtime context while tracking was on keeps its
    own: uninstall does not put the original back over it."""
    original = context_api._RUNTIME_CONTEXT
    spans.install()
    theirs = _OtherRuntime()
    try:
        context_api._RUNTIME_CONTEXT = theirs  # type: ignore[attr-defined]
        spans.uninstall()
        assert context_api._RUNTIME_CONTEXT is theirs
    finally:
        spans.uninstall()
        context_api._RUNTIME_CONTEXT = original  # type: ignore[attr-defined]
