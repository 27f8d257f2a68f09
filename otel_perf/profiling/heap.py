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

Speed: a snapshot holds one trace per live block, millions in a busy program. The standard library's
``Snapshot.filter_traces``, ``statistics`` and ``compare_to`` build Python objects per trace, and while
tracemalloc runs each of those allocations is itself traced: measured on 1.8 million live blocks, 36 s,
6 s and 20 s, so a 3-second heap profile of a program allocating 35 MB/s took over a minute. Here the
raw traces are grouped by traceback in one loop that allocates nothing per trace (0.2 s for the same
snapshot), our own and tracemalloc's allocations are left out per group, and a request that started
tracemalloc stops it before grouping. The raw traces are ``Snapshot.traces._traces`` (stable since Python
3.4); where it is missing the public ``statistics()`` is used instead (slower, same result).
"""

from __future__ import annotations

import ast
import gc
import linecache
import logging
import threading
import tracemalloc
from collections import OrderedDict
from collections.abc import Sequence

from otel_perf._safety import log_once
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


#: A traceback as tracemalloc keeps it: (filename, line) frames, the most recent (the leaf) first.
_Frames = tuple[tuple[str, int], ...]
#: Allocations of these files are the profiler's own, not the program's.
_OWN_FILES = frozenset({tracemalloc.__file__, __file__})


def _add(builder: ProfileBuilder, frames: Sequence[tuple[str, int]], count: int, size: int,
         locations: dict[tuple[str, int], int]) -> None:
    ids = []
    for key in frames:  # leaf first, as pprof wants
        location = locations.get(key)
        if location is None:
            filename, lineno = key
            name, first = _function_at(filename, lineno)
            location = locations[key] = builder.location(builder.function(name, filename, first), lineno)
        ids.append(location)
    builder.sample(ids, [count, size])


def _grouped(snapshot: tracemalloc.Snapshot) -> dict[_Frames, tuple[int, int]]:
    """(blocks, bytes) per traceback, leaving out tracemalloc's and this module's own allocations."""
    raw = getattr(getattr(snapshot, "traces", None), "_traces", None)
    if not isinstance(raw, list):
        log_once("heap-public-statistics", "otel-perf: tracemalloc's raw traces are not available in this "
                 "Python; heap profiles use Snapshot.statistics() (slower with many live blocks)",
                 level=logging.INFO)
        public = {tuple((f.filename, f.lineno) for f in reversed(stat.traceback)): (stat.count, stat.size)
                  for stat in snapshot.statistics("traceback")}
        return {frames: value for frames, value in public.items() if frames and frames[0][0] not in _OWN_FILES}
    # One loop over every live block that allocates nothing per block (each allocation would be traced
    # too): the sizes of a traceback go into its list, summed in C below. Identical tracebacks are one
    # tuple object in a snapshot, so the dictionary finds them by identity after the hash.
    sizes_by_traceback: dict[_Frames, list[int]] = {}
    get = sizes_by_traceback.get
    for trace in raw:  # (domain, size, traceback, total frames)
        sizes = get(trace[2])
        if sizes is None:
            sizes = sizes_by_traceback[trace[2]] = []
        sizes.append(trace[1])
    return {frames: (len(sizes), sum(sizes)) for frames, sizes in sizes_by_traceback.items()
            if frames and frames[0][0] not in _OWN_FILES}


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
        in_use = _grouped(tracemalloc.take_snapshot())
        for stack, (count, size) in sorted(in_use.items(), key=lambda item: -item[1][1]):
            _add(builder, stack, count, size, locations)
        return builder.encode()
    if not _lock.acquire(blocking=False):
        raise HeapBusy("a heap growth profile is already running; try again when it ends")
    try:
        started_here = not tracemalloc.is_tracing()
        wait = seconds if seconds else DEFAULT_GROWTH_SECONDS
        before: dict[_Frames, tuple[int, int]] = {}
        if started_here:
            tracemalloc.start(frames)
            builder.comment(f"tracemalloc started by this request: growth over {wait:g} s")
        else:
            if run_gc:
                gc.collect()
            before = _grouped(tracemalloc.take_snapshot())
            builder.comment(f"growth over {wait:g} s")
        try:
            waiting.wait(wait)
            if run_gc:
                gc.collect()
            snapshot = tracemalloc.take_snapshot()
        finally:
            if started_here:
                tracemalloc.stop()  # before grouping: the program runs untraced again at once
        after = _grouped(snapshot)
        del snapshot
        builder.duration_nanos = int(wait * 1e9)
        growth = []
        for stack, (count, size) in after.items():
            count_before, size_before = before.get(stack, (0, 0))
            if size > size_before:
                growth.append((size - size_before, max(count - count_before, 0), stack))
        for size, count, stack in sorted(growth, key=lambda item: -item[0]):
            _add(builder, stack, count, size, locations)
        return builder.encode()
    finally:
        _lock.release()
