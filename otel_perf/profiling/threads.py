"""Thread dumps: every thread's stack (and every asyncio task's), as text or as a pprof profile.

Why this module exists: Go's ``/debug/pprof/goroutine`` is the first thing one reads when a program hangs
or piles up work. Its Python equivalent is a dump of all threads: ``debug=2`` gives every stack in full
(with source lines, and the asyncio tasks with where each is suspended), ``debug=1`` groups identical stacks
with their counts, and ``debug=0`` is a pprof profile (``threads``/``count``) that ``go tool pprof`` reads.
"""

from __future__ import annotations

import sys
import threading
import traceback
from types import FrameType
from typing import Any

from otel_perf.profiling.pprof import ProfileBuilder, python_function_name

__all__ = ["asyncio_tasks", "dump_grouped", "dump_pprof", "dump_text", "thread_stacks"]


def _threads_by_ident() -> dict[int, threading.Thread]:
    return {t.ident: t for t in threading.enumerate() if t.ident is not None}


def thread_stacks() -> list[tuple[int, threading.Thread | None, FrameType]]:
    """(ident, Thread or None, top frame) for every thread of this process, main thread first.

    The calling thread's stack starts at the caller of this function.
    """
    threads = _threads_by_ident()
    frames = sys._current_frames()
    own = threading.get_ident()
    frames[own] = sys._getframe(1)
    main = threading.main_thread().ident
    order = sorted(frames, key=lambda i: (i != main, i))
    return [(ident, threads.get(ident), frames[ident]) for ident in order]


def _thread_title(ident: int, thread: threading.Thread | None) -> str:
    if thread is None:
        return f"Thread {ident} (not started by threading)"
    flags = "daemon" if thread.daemon else "non-daemon"
    return f'Thread {ident} "{thread.name}" (native id {thread.native_id}, {flags})'


def asyncio_tasks() -> list[Any]:
    """Every asyncio task not yet done, of every event loop in the process."""
    module = sys.modules.get("asyncio.tasks")
    if module is None:
        return []
    found: dict[int, Any] = {}
    # 3.10/3.11 keep all tasks in _all_tasks; 3.12+ split them into _scheduled_tasks and _eager_tasks.
    for attribute in ("_all_tasks", "_scheduled_tasks", "_eager_tasks"):
        collection = getattr(module, attribute, None)
        if collection is None:
            continue
        for _ in range(10):
            try:
                items = list(collection)
                break
            except RuntimeError:  # the set changed size while copying: another thread is running
                continue
        else:
            items = []
        for task in items:
            found.setdefault(id(task), task)
    return [task for task in found.values() if not task.done()]


def _task_title(task: Any) -> str:
    coro = task.get_coro()
    coro_name = getattr(coro, "__qualname__", type(coro).__name__)
    loop = task.get_loop()
    thread = getattr(loop, "_thread_id", None)
    where = f"loop in thread {thread}" if thread is not None else "loop not running"
    return f'Task "{task.get_name()}" coro={coro_name} ({where})'


def dump_text() -> str:
    """Every thread's full stack with source lines, then every pending asyncio task (``debug=2``)."""
    parts: list[str] = []
    for ident, thread, frame in thread_stacks():
        parts.append(_thread_title(ident, thread) + ":\n")
        parts.extend(traceback.format_stack(frame))
        parts.append("\n")
    tasks = asyncio_tasks()
    if tasks:
        parts.append(f"asyncio tasks ({len(tasks)}):\n\n")
        for task in tasks:
            parts.append(_task_title(task) + ":\n")
            frames = task.get_stack()
            if frames:
                for frame in frames:
                    parts.extend(traceback.format_stack(frame, limit=1))
            else:
                parts.append("  (not started)\n")
            parts.append("\n")
    return "".join(parts)


def _frame_key(frame: FrameType) -> list[tuple[str, str, int]]:
    """(function, file, line) innermost first."""
    out = []
    f: FrameType | None = frame
    while f is not None:
        code = f.f_code
        qualname = getattr(code, "co_qualname", code.co_name)
        out.append((python_function_name(qualname, code.co_filename), code.co_filename,
                    f.f_lineno or code.co_firstlineno))
        f = f.f_back
    return out


def dump_grouped() -> str:
    """Threads grouped by identical stack, with their counts, most common first (``debug=1``)."""
    groups: dict[tuple[tuple[str, str, int], ...], list[str]] = {}
    for ident, thread, frame in thread_stacks():
        groups.setdefault(tuple(_frame_key(frame)), []).append(thread.name if thread else str(ident))
    total = sum(len(names) for names in groups.values())
    parts = [f"threads profile: total {total}\n"]
    for stack, names in sorted(groups.items(), key=lambda item: -len(item[1])):
        parts.append(f"{len(names)} @ {', '.join(names)}\n")
        for function, filename, line in stack:
            parts.append(f"#\t{function}\t{filename}:{line}\n")
        parts.append("\n")
    return "".join(parts)


def dump_pprof() -> bytes:
    """One sample per thread (``threads``/``count``), labelled with the thread's name (``debug=0``)."""
    builder = ProfileBuilder([("threads", "count")], default_sample_type="threads")
    for ident, thread, frame in thread_stacks():
        location_ids = []
        f: FrameType | None = frame
        while f is not None:
            code = f.f_code
            qualname = getattr(code, "co_qualname", code.co_name)
            function = builder.function(python_function_name(qualname, code.co_filename), code.co_filename,
                                        code.co_firstlineno)
            location_ids.append(builder.location(function, f.f_lineno or code.co_firstlineno))
            f = f.f_back
        builder.sample(location_ids, [1], {"thread": thread.name if thread else str(ident)})
    return builder.encode()
