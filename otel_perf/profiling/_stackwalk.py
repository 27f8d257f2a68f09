"""The stacks a sampler walks: per-thread state kept between ticks, location numbering, the incremental walk.

Why this module exists: ``sampler.py`` runs the ticks (clocks, labels, counting, windows); what a tick
does to one thread's stack is a concern of its own and the hottest code of the profiler. A walk starts
at the innermost frame and stops at the first frame that is the same object at the same instruction as
in the thread's previous walk, so a parked thread costs one comparison and a busy one the frames that
changed. Locations (function and line) are numbered per window as they are first seen and looked up by
``id(code)`` and instruction offset: a code object's hash is recomputed from its constants and names on
every lookup, and ``f_lineno`` is a line-table search, so both are paid once per new location only.
"""

from __future__ import annotations

import threading
from types import CodeType, FrameType
from typing import Any

from otel_perf.profiling import spans as span_tracking
from otel_perf.profiling._threadclock import _thread_clock_id
from otel_perf.profiling.pprof import python_function_name

__all__ = ["RESUMABLE", "FunctionKey", "Locations", "ThreadState", "walk"]

# CO_GENERATOR | CO_COROUTINE | CO_ITERABLE_COROUTINE | CO_ASYNC_GENERATOR (Include/cpython/code.h)
RESUMABLE = 0x20 | 0x80 | 0x100 | 0x200
#: (name, file name, first line): what identifies a function in the profile
FunctionKey = tuple[str, str, int]
_NO_SPAN = span_tracking.NO_SPAN


class ThreadState:
    """What a sampler keeps of one thread between ticks: its CPU clock, its previous walk, its labels."""

    __slots__ = ("cells", "clock_id", "clock_ok", "frames", "index", "last_cpu", "lastis", "name",
                 "native_id", "span", "span_labels", "stack", "task", "task_object", "thread")

    def __init__(self, thread: threading.Thread | None, native_id: int | None) -> None:
        self.thread = thread
        self.native_id = native_id
        self.clock_ok = native_id is not None
        self.clock_id = _thread_clock_id(native_id) if native_id is not None else 0
        self.last_cpu = 0
        # The previous walk, outermost first: frames, their instruction offsets, location ids, and
        # id(frame) -> position (stale entries are caught by the identity check). The frames are kept
        # until the next walk so that their ids cannot be reused meanwhile.
        self.frames: list[FrameType] = []
        self.lastis: list[int] = []
        self.stack: list[int] = []
        self.index: dict[int, int] = {}
        # The count cells of the stacks that differ from the previous walk only in the innermost location
        # (innermost location id -> [count, value]), valid while the outer frames and the labels
        # (thread name and task name) stay the same: a sample then costs no stack tuple and no hashing.
        self.cells: dict[int, list[int]] = {}
        self.name = ""
        self.task = ""
        self.task_object: Any = None
        self.span: Any = None
        self.span_labels = _NO_SPAN

    def forget_locations(self) -> None:
        """Drop what refers to location ids (a new window numbers them afresh); keep the CPU clock."""
        self.frames.clear()
        self.lastis.clear()
        self.stack.clear()
        self.index.clear()
        self.cells.clear()
        self.span = None
        self.span_labels = _NO_SPAN


class Locations:
    """The locations of one window, numbered in the order they are first seen (the pprof builder's own
    numbering: one id per (function name, file, first line) and line, so the ids it gives back at encoding
    are these). ``codes`` keeps every code object seen alive, so that its id stays its own until the window
    ends."""

    __slots__ = ("by_code", "codes", "functions", "ids", "keys")

    def __init__(self) -> None:
        self.by_code: dict[int, dict[int, int]] = {}  # id(code) -> {instruction: location id}
        self.functions: dict[int, FunctionKey] = {}  # id(code) -> function
        self.codes: list[CodeType] = []
        self.ids: dict[tuple[FunctionKey, int], int] = {}  # (function, line) -> location id
        self.keys: list[tuple[FunctionKey, int]] = []  # location id - 1 -> (function, line)

    def new_location(self, code: CodeType, lasti: int, line: int) -> int:
        """The location id of ``code`` at instruction ``lasti`` (on ``line``), seen for the first time."""
        key = id(code)
        function = self.functions.get(key)
        if function is None:
            qualname = getattr(code, "co_qualname", code.co_name)  # co_qualname: Python 3.11+
            filename = code.co_filename
            function = self.functions[key] = (python_function_name(qualname, filename), filename,
                                               code.co_firstlineno)
            self.codes.append(code)
            self.by_code[key] = {}
        location = self.by_code[key][lasti] = self.location_id(function, line)
        return location

    def location_id(self, function: FunctionKey, line: int) -> int:
        key = (function, line)
        location = self.ids.get(key)
        if location is None:
            self.keys.append(key)
            location = self.ids[key] = len(self.keys)
        return location

    def overflow_location(self) -> int:
        """The location of the one stack that counts the samples beyond ``max_stacks``."""
        return self.location_id(("(other stacks)", "", 0), 0)


def walk(frame: FrameType, state: ThreadState, table: Locations, limit: int, stats: Any) -> int:
    """Update the state's stack (location ids, outermost first) to that of ``frame``; return the
    innermost location. ``limit`` is the sampler's ``max_depth``; ``stats.frames_walked`` counts the frames
    read.

    Walking (from the innermost frame) stops at the first frame that is the same object at the same
    instruction as in this thread's previous walk: everything below it is unchanged (a frame's callers
    are fixed while it runs), so the previous walk is cut there and the new frames appended, in
    place. A parked thread costs one comparison; a busy one the frames that changed. Generator and
    coroutine frames are never such anchors: resumed, they can have another caller at the same
    instruction.
    """
    locations = table.by_code
    frames = state.frames
    lastis = state.lastis
    index = state.index
    new_frames: list[FrameType] = []
    new_lastis: list[int] = []
    new_stack: list[int] = []
    keep = 0
    f: FrameType | None = frame
    while f is not None:
        code = f.f_code
        lasti = f.f_lasti
        position = index.get(id(f))
        if (position is not None and position < len(frames) and frames[position] is f
                and lastis[position] == lasti and not code.co_flags & RESUMABLE):
            keep = position + 1
            break
        if len(new_frames) >= limit:
            keep = 0  # deeper than kept: the outermost frames are left out
            break
        # Keyed by instruction, not line: f_lasti is a field read, f_lineno a line-table search that
        # is done once per new location only.
        by_lasti = locations.get(id(code))
        location = by_lasti.get(lasti) if by_lasti is not None else None
        if location is None:
            location = table.new_location(code, lasti, f.f_lineno or code.co_firstlineno)
        new_frames.append(f)
        new_lastis.append(lasti)
        new_stack.append(location)
        f = f.f_back
    stack = state.stack
    if not new_frames and keep == len(frames):
        return stack[-1]  # nothing changed since the previous walk
    stats.frames_walked += len(new_frames)
    state.cells.clear()  # the outer frames changed
    del frames[keep:], lastis[keep:], stack[keep:]
    new_frames.reverse()
    new_lastis.reverse()
    new_stack.reverse()
    for position, f in enumerate(new_frames, keep):
        index[id(f)] = position
    frames += new_frames
    lastis += new_lastis
    stack += new_stack
    if len(index) > 2 * len(frames) + 64:
        state.index = {id(x): i for i, x in enumerate(frames)}
    return stack[-1]
