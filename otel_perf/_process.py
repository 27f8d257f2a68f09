"""This process's place in otel-perf: its role in the process tree, the active handle, the worker bootstrap.

Why this module exists: instrumentations need three things the set-up layer (``otel_perf._sdk``) decides,
and importing that layer from below would load the SDK set-up and the OTLP exporters into every program
that imports an instrumentation (``docs/architecture.md``, "Layers"). So the set-up layer writes them here
and the instrumentations read them here:

* the process role: the first otel-perf process of a process tree is the root; its children inherit
  :data:`ROOT_MARKER` and so know they are not (root-only services, process-tree metrics);
* the handle of the active ``configure()``, which a pool pickles into a configuration snapshot for its
  worker processes;
* the worker bootstrap: a spawn or forkserver worker of a ``configure()``d parent configures itself from
  that snapshot. The set-up layer registers the function that does it (:func:`set_worker_bootstrap`) when
  it is imported, and unpickling a snapshot imports it (the snapshot's class lives there), so a worker
  reaches the set-up layer through this hook, never through an import from below.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from typing import Any

from otel_perf._safety import log_once

__all__ = [
    "ROOT_MARKER",
    "bootstrap_worker",
    "current_handle",
    "is_root_process",
    "mark_root",
    "set_current_handle",
    "set_worker_bootstrap",
]

#: Environment marker: the pid of the first otel-perf process of a process tree. Children inherit it and
#: so know they are not the root.
ROOT_MARKER = "OTEL_PERF_ROOT_PID"

#: The handle of the active ``configure()`` (an ``otel_perf._sdk.Handle``), None when there is none.
_handle: Any = None

#: Configures this worker process from its parent's configuration snapshot (``otel_perf._sdk``).
_worker_bootstrap: Callable[[Any], object] | None = None


def mark_root(env: dict[str, str] | os._Environ[str] | None = None) -> bool:
    """Set the root marker unless an ancestor did. Returns True if this process is the root."""
    environ = os.environ if env is None else env
    if not environ.get(ROOT_MARKER):
        environ[ROOT_MARKER] = str(os.getpid())
    return environ.get(ROOT_MARKER) == str(os.getpid())


def is_root_process() -> bool:
    """Whether this is the first otel-perf process of its tree (forked children are not)."""
    marker = os.environ.get(ROOT_MARKER)
    return not marker or marker == str(os.getpid())


def current_handle() -> Any:
    """The handle of the active ``configure()`` (an :class:`otel_perf.Handle`), or None."""
    return _handle


def set_current_handle(handle: Any) -> None:
    """Record (or, with None, forget) the active handle: the set-up layer's ``configure()`` and shutdown."""
    global _handle
    _handle = handle


def set_worker_bootstrap(bootstrap: Callable[[Any], object]) -> None:
    """Register the function that configures a worker process from an unpickled configuration snapshot."""
    global _worker_bootstrap
    _worker_bootstrap = bootstrap


def bootstrap_worker(snapshot: bytes) -> None:
    """Configure this worker process like its parent from the pickled snapshot, unless it already is.

    Unpickling imports the set-up layer, which registers the bootstrap; without one (an otel-perf whose
    set-up layer cannot load) the worker runs on without an SDK of its own (logged once).
    """
    if _handle is not None:
        return
    state = pickle.loads(snapshot)
    bootstrap = _worker_bootstrap
    if bootstrap is None:
        log_once("worker-bootstrap-missing", "otel-perf: no worker bootstrap is registered; this worker "
                 "process exports nothing of its own")
        return
    bootstrap(state)
