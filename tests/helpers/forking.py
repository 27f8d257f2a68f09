"""Fork while another thread holds a lock, and see whether the child gets through (bounded in time)."""

from __future__ import annotations

import os
import signal
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

__all__ = ["fork_while_held"]


def fork_while_held(lock: Any, in_child: Callable[[], object], timeout: float = 10.0) -> str:
    """Hold ``lock`` in another thread, fork, run ``in_child`` in the child; the child's outcome.

    Returns ``"ok"`` when the child ran ``in_child`` and exited, ``"raised"`` when it raised, and
    ``"deadlocked"`` when it was still running after ``timeout`` seconds (it is then killed).
    """
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with lock:
            held.set()
            release.wait(timeout + 5)

    thread = threading.Thread(target=holder, daemon=True)
    thread.start()
    held.wait(5)
    try:
        with warnings.catch_warnings():
            # Python 3.12+ warns that forking a multi-threaded process may deadlock: that is the point here.
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            code = 0
            try:
                in_child()
            except BaseException:
                code = 3
            os._exit(code)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return "ok" if os.waitstatus_to_exitcode(status) == 0 else "raised"
            time.sleep(0.02)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        return "deadlocked"
    finally:
        release.set()
        thread.join(5)
