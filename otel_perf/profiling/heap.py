"""Heap profiles from ``tracemalloc``, as pprof ``inuse_objects``/``inuse_space``.

Why this module exists: Go's ``/debug/pprof/heap`` shows which code holds the memory. Python's
``tracemalloc`` records where each live block was allocated, but it must be running before the allocations
happen and it slows allocation down, so it is off by default. Two cases:

* tracemalloc is running (``OTEL_PERF_TRACEMALLOC=N`` started it at start-up, or the program did): the
  profile is what is in use now; with ``seconds`` it is the growth over that many seconds (Go's delta
  profile).
* tracemalloc is not running: the request starts it, waits ``seconds`` (default 10), and returns what was
  allocated in that window and is still alive (the growth); then it stops tracemalloc again, so one heap
  request does not leave the program slower for good.

tracemalloc records file and line, not function names; names are found once per file from its source
(``ast``), so ``go tool pprof -top`` lists functions as it does for CPU profiles.
"""

from __future__ import annotations

import ast
import gc
import linecache
import threading
import tracemalloc
from collections import OrderedDict
from collections.abc import Sequence

from otel_perf.profiling.pprof import ProfileBuilder, python_function_name

__all__ = ["DEFAULT_FRAMES", "DEFAULT_GROWTH_SECONDS", "HeapBusy", "heap_profile"]

#: Frames tracemalloc keeps when a heap request starts it.
DEFAULT_FRAMES = 32
#: Seconds a heap request waits when it had to start tracemalloc itself.
DEFAULT_GROWTH_SECONDS = 10.0

_lock = threading.Lock()
_cache_lock = threading.Lock()  # heap requests run in concurrent server threads
_FILE_CACHE_SIZE = 512
_functions_by_file: OrderedDict[str, list[tuple[int, int, str]]] = OrderedDict()


class HeapBusy(RuntimeError):
    """Another heap profile that measures growth is running."""


def _function_spans(filename: str) -> list[tuple[int, int, str]]:
    """(first line, last line, qualified name) of every function and class of a file, innermost last."""
    with _cache_lock:
        spans = _functions_by_file.get(filename)
        if spans is not None:
            _functions_by_file.move_to_end(filename)
            return spans
    spans = []
    source = "".join(linecache.getlines(filename))
    if source:
        try:
            tree = ast.parse(source, filename)
        except (SyntaxError, ValueError):
            tree = None
        if tree is not None:
            def visit(node: ast.AST, prefix: str) -> None:
                for child in ast.iter_child_nodes(node):
                    if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                        name = prefix + child.name
                        first = min([child.lineno] + [d.lineno for d in child.decorator_list])
                        spans.append((first, child.end_lineno or child.lineno, name))
                        inner = name + (".<locals>." if not isinstance(child, ast.ClassDef) else ".")
                        visit(child, inner)
                    else:
                        visit(child, prefix)

            visit(tree, "")
    with _cache_lock:
        _functions_by_file[filename] = spans
        if len(_functions_by_file) > _FILE_CACHE_SIZE:
            _functions_by_file.popitem(last=False)
    return spans


def _function_at(filename: str, line: int) -> tuple[str, int]:
    """The qualified name and first line of the innermost function containing ``line``."""
    best: tuple[int, int, str] | None = None
    for first, last, name in _function_spans(filename):
        if first <= line <= last and (best is None or first >= best[0]):
            best = (first, last, name)
    if best is None:
        return python_function_name("<module>", filename), 0
    return best[2], best[0]


def _add(builder: ProfileBuilder, frames: Sequence[tracemalloc.Frame], count: int, size: int,
         locations: dict[tuple[str, int], int]) -> None:
    ids = []
    # tracemalloc's tracebacks iterate oldest frame first; pprof wants the leaf first.
    for frame in reversed(frames):
        key = (frame.filename, frame.lineno)
        location = locations.get(key)
        if location is None:
            name, first = _function_at(frame.filename, frame.lineno)
            location = locations[key] = builder.location(builder.function(name, frame.filename, first),
                                                         frame.lineno)
        ids.append(location)
    builder.sample(ids, [count, size])


def _filtered(snapshot: tracemalloc.Snapshot) -> tracemalloc.Snapshot:
    # Leave out tracemalloc's own bookkeeping and this module's.
    return snapshot.filter_traces([tracemalloc.Filter(False, tracemalloc.__file__),
                                   tracemalloc.Filter(False, __file__)])


def heap_profile(seconds: float | None = None, *, frames: int = DEFAULT_FRAMES, run_gc: bool = False,
                 stop: threading.Event | None = None) -> bytes:
    """A heap profile as gzipped pprof (``inuse_objects``/``count``, ``inuse_space``/``bytes``).

    Args:
        seconds: with tracemalloc running, measure the growth over this many seconds instead of what is in
            use now; without it, how long to trace (default :data:`DEFAULT_GROWTH_SECONDS`).
        frames: frames per traceback when this call has to start tracemalloc.
        run_gc: run a full garbage collection before each snapshot (Go's ``gc=1``).
        stop: set it to end the waiting early.

    Raises:
        HeapBusy: another growth measurement is running.
    """
    waiting = stop or threading.Event()
    builder = ProfileBuilder([("inuse_objects", "count"), ("inuse_space", "bytes")],
                             default_sample_type="inuse_space")
    locations: dict[tuple[str, int], int] = {}
    if tracemalloc.is_tracing() and not seconds:
        if run_gc:
            gc.collect()
        snapshot = _filtered(tracemalloc.take_snapshot())
        for stat in snapshot.statistics("traceback"):
            _add(builder, stat.traceback, stat.count, stat.size, locations)
        return builder.encode()
    if not _lock.acquire(blocking=False):
        raise HeapBusy("a heap growth profile is already running; try again when it ends")
    try:
        started_here = not tracemalloc.is_tracing()
        wait = seconds if seconds else DEFAULT_GROWTH_SECONDS
        if started_here:
            tracemalloc.start(frames)
            builder.comment(f"tracemalloc started by this request: growth over {wait:g} s")
            before = None
        else:
            if run_gc:
                gc.collect()
            before = _filtered(tracemalloc.take_snapshot())
            builder.comment(f"growth over {wait:g} s")
        try:
            waiting.wait(wait)
            if run_gc:
                gc.collect()
            after = _filtered(tracemalloc.take_snapshot())
        finally:
            if started_here:
                tracemalloc.stop()
        builder.duration_nanos = int(wait * 1e9)
        if before is None:
            for stat in after.statistics("traceback"):
                _add(builder, stat.traceback, stat.count, stat.size, locations)
        else:
            for diff in after.compare_to(before, "traceback"):
                if diff.size_diff > 0:
                    _add(builder, diff.traceback, max(diff.count_diff, 0), diff.size_diff, locations)
        return builder.encode()
    finally:
        _lock.release()
