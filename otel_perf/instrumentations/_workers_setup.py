"""Setting up a process pool's worker processes once, when each of them starts.

Why this module exists: a worker process needs otel-perf's set-up before its first job (the flush when it
ends, and for a ``configure()``d parent's spawn, forkserver or loky worker, an SDK configured like the
parent's), and that set-up needs the parent's configuration snapshot (about 1.1 KB, OTLP headers and their
secrets included). Sending it with every job cost 1.1 KB a job; every process pool reads its initializer
(``_initializer``/``_initargs``) each time it starts a worker, so the set-up becomes the initializer
(:func:`worker_initializer`, then the pool's own) and the snapshot travels once per worker process, with
its start-up arguments. ``ProcessPoolExecutor`` and loky start workers at a submission, so their pools are
set up at their first instrumented submission; ``multiprocessing.pool.Pool`` starts its workers in its
constructor, so ``Pool._repopulate_pool`` sets them up (workers.py).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from otel_perf._process import current_handle
from otel_perf.instrumentations import _workers_bootstrap, _workers_carrier, _workers_trampoline
from otel_perf.instrumentations._workers_state import fault

__all__ = ["SET_UP", "set_up_workers", "worker_initializer"]

#: Marks a pool whose future worker processes start with :func:`worker_initializer`.
SET_UP = "_otel_perf_workers_set_up"


def worker_initializer(snapshot: bytes | None, initializer: Callable[..., Any] | None, initargs: Any) -> None:
    """A process pool's initializer while instrumented: set this worker up, then run the pool's own.

    Module level, so that it pickles by name for spawn, forkserver and loky workers. The pool's own
    initializer runs exactly as it would have: its exceptions reach the pool (which then behaves as it
    does bare: ``BrokenProcessPool``, or a ``multiprocessing`` pool starting a new worker).

    Args:
        snapshot: the pickled ``configure()`` snapshot of the parent, for a worker that starts without
            the parent's SDK (spawn, forkserver, loky); None otherwise.
        initializer: the pool's own initializer, or None.
        initargs: its arguments.
    """
    try:
        if _workers_bootstrap.worker_pid != _workers_carrier.my_pid:
            _workers_bootstrap.ensure_worker_sdk(snapshot)
    except Exception as exc:
        fault("setting up a pool worker process", exc)
    if initializer is not None:
        initializer(*initargs)


def _start_method(context: Any) -> str | None:
    try:
        method = context.get_start_method() if context is not None else None
    except Exception:
        return None
    return method if isinstance(method, str) else None


def set_up_workers(pool: Any, context: Any, started: bool) -> bool:
    """Make the worker processes ``pool`` starts from now on run :func:`worker_initializer` first.

    Sets the pool's ``_initializer``/``_initargs`` (read by ``ProcessPoolExecutor``, loky's executor and
    ``multiprocessing.pool.Pool`` each time they start a worker), once per pool. The ``configure()``
    snapshot goes with it when the workers will not inherit the parent's SDK (any start method but fork).

    Args:
        pool: the process pool.
        context: its multiprocessing context (for the start method).
        started: the pool already runs workers: they missed the set-up.

    Returns:
        True when the pool's jobs must carry the snapshot themselves: a ``configure()``d parent, workers
        that do not inherit its SDK, and some of them already started.
    """
    if pool.__dict__.get(SET_UP):
        return False
    handle = current_handle()
    snapshot = None
    if handle is not None and _start_method(context) != "fork":
        snapshot = _workers_trampoline.snapshot(handle)
    pool._initializer = functools.partial(worker_initializer, snapshot, pool._initializer, pool._initargs)
    pool._initargs = ()
    pool.__dict__[SET_UP] = True
    return started and snapshot is not None
