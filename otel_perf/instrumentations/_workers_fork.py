"""Forking worker processes while the SDK exports or collects: wait for it, so no worker inherits a held lock.

Why this module exists: a forked pool worker exports what it records through the providers it inherited
(its job spans, and when it ends its metrics: ``_workers_bootstrap``). ``fork()`` copies only the thread that
forks; a lock another thread held at that moment stays held in the child forever. The SDK replaces the
locks of its batch processors after a fork, but not the ones below them: the gRPC channel's locks inside
an OTLP exporter that was in the middle of an export, the periodic metric reader's export lock, or the
meter provider's collection lock. A worker forked during an export (likely in any program whose threads
record while a pool starts, since a busy batch processor exports several times a second) then hangs
when it flushes at exit, and the pool, and the program's own exit, waits for it forever.

So, while the pool instrumentation is on, every ``fork()`` in the process first waits for the exports and
collections in progress to finish, holding their locks across the fork (as CPython does for its own
locks), and releases them in the parent and in the child. The wait is bounded (:data:`WAIT` in total per
fork, and no wait at all on a lock that was still busy at the previous fork: a backend that is down keeps
an export running for the exporter's whole timeout): a worker forked without one of the locks does not
flush that signal at exit (:data:`unsafe`): it loses what it had not exported rather than hang. The locks
are SDK internals: ``otel_perf._sdk_internals.export_locks`` finds them (and says once when it cannot).
"""

from __future__ import annotations

import os
import time
from typing import Any

from otel_perf._sdk_internals import export_locks

__all__ = ["WAIT", "unsafe"]

#: Seconds a fork waits, in total, for exports and collections in progress.
WAIT = 1.0

#: In a forked worker: the signals (``traces``, ``logs``, ``metrics``) whose lock could not be taken before
#: the fork. Their exporter may hold a lock forever in this process: the worker does not flush them.
unsafe: set[str] = set()

_held: list[Any] = []
_missed: list[str] = []
#: ids of locks that were still busy at the previous fork (tried without waiting until taken again).
_busy: set[int] = set()
_active = False


def activate(on: bool) -> None:
    """Quiesce exports around forks (``on``) or stop (uninstrumented)."""
    global _active
    _active = on


def _before_fork() -> None:
    if not _active:
        return
    try:
        deadline = time.monotonic() + WAIT
        for signal, lock in export_locks():
            if lock is None or not hasattr(lock, "acquire"):
                continue
            wait = 0.0 if id(lock) in _busy else max(0.0, deadline - time.monotonic())
            if lock.acquire(True, wait) if wait > 0 else lock.acquire(False):
                _held.append(lock)
                _busy.discard(id(lock))
            else:
                _missed.append(signal)
                _busy.add(id(lock))
    except Exception:  # never fail a fork: what was taken is released after it
        pass


def _release() -> None:
    while _held:
        try:
            _held.pop().release()
        except Exception:  # released by someone else: nothing to give back
            pass


def _after_fork_in_parent() -> None:
    _release()
    if _missed:
        signals = sorted(set(_missed))
        _missed.clear()
        from otel_perf._safety import log_once

        log_once(("fork-during-export", *signals),
                 "otel-perf: a process forked while %s were being exported; a pool worker forked then does "
                 "not flush them when it ends (it could wait forever on the exporter's lock)",
                 " and ".join(signals))


def _after_fork_in_child() -> None:
    _release()
    unsafe.clear()
    unsafe.update(_missed)
    _missed.clear()
    _busy.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                        after_in_child=_after_fork_in_child)
