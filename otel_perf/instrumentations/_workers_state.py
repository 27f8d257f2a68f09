"""What otel-perf knows about each worker pool: its name, its job log and how to read its state.

Why this module exists: pool metrics are recorded by the process that owns the pool (DESIGN.md,
"Processes"). Each pool's :class:`PoolState` holds its name and kind, its job log
(``_workers_joblog``: the hot path's raw timings, folded into the histograms in bulk), and the readers of
its queue depth, busy workers, worker limit and worker memory, which the observable instruments call at
collection time (``_workers_metrics``) rather than counting anything on the hot path.

A pool's jobs outlive the pool: a pool made in a function (``with ThreadPoolExecutor() as p: ...``), a pool
per request, or asyncio's default executor is usually gone before the next collection. Its state is
registered weakly; when it goes, what its log still holds is handed to :data:`orphans` (a list append: the
callback may run inside the garbage collector, where no lock may be taken) and folded into the series at
the next publication, which publishes it. Nothing of the pool stays after that: the series are shared by
every pool of the same name and kind, so a program that makes 100 000 short pools keeps one set of series
and no per-pool state.

The registry of live pools is per process and is emptied in a forked child, so a worker never
re-exports its parent's pools.
"""

from __future__ import annotations

import os
import sys
import threading
import weakref
from collections.abc import Callable
from typing import Any

from opentelemetry.metrics import Counter
from opentelemetry.trace import Tracer

from otel_perf._aggregate import Series
from otel_perf._error_type import error_type_of
from otel_perf._safety import log_once, raise_internal_errors
from otel_perf._semconv import (
    JOB_OUTCOME,
    OUTCOME_CANCELLED,
    POOL_KIND,
    POOL_KIND_CUSTOM,
    POOL_NAME,
)
from otel_perf.instrumentations import _workers_joblog
from otel_perf.instrumentations._workers_joblog import JOB_DURATION, JOB_WAIT, JobLog, orphans
from otel_perf.instrumentations._workers_sources import (
    SOURCE_CUSTOM,
    SOURCE_LOKY,
    SOURCE_MP,
    SOURCE_MP_THREAD,
    SOURCE_PPE,
    SOURCE_TPE,
    created_internally,
    default_name,
    source_of,
)

__all__ = [
        "PoolState",
    "Runtime",
    "custom_state",
    "error_type",
    "fault",
    "live_states",
    "runtime",
    "state_for",
    "states_by_id",
    "unpublished",
]

_EXECUTOR_SOURCES = (SOURCE_TPE, SOURCE_PPE, SOURCE_LOKY)
_PROCESS_EXECUTOR_SOURCES = (SOURCE_PPE, SOURCE_LOKY)
_STATE_ATTR = "_otel_perf_pool"




class Runtime:
    """What the hot path needs from the active instrumentor, read as plain attributes.

    ``active`` is False while uninstrumented: patched methods already captured by user code (a bound
    ``submit`` kept in a variable) then pass straight through.
    """

    __slots__ = ("active", "rejected", "retries", "slow", "spans", "tracer")

    def __init__(self) -> None:
        self.active = False
        self.spans = False  # a span for every job
        self.slow: float | None = None  # OTEL_PERF_POOL_SPANS=slow: a span for jobs at least this slow
        self.tracer: Tracer | None = None
        self.rejected: Counter | None = None
        self.retries: Counter | None = None


runtime = Runtime()

#: pool id -> weak reference to its state. A plain dict of references rather than a WeakValueDictionary:
#: the owner looks a process job's pool up for every result, and ``WeakValueDictionary.get`` is Python code
#: (so is a lookup function: the owner reads this dict inline).
states_by_id: dict[int, weakref.ref[PoolState]] = {}



def _register(state: PoolState) -> None:
    pool_id = state.id
    log = state.log

    def gone(_: object) -> None:
        # May run inside the garbage collector, in any thread: no lock, no allocation beyond the append.
        states_by_id.pop(pool_id, None)
        if log.done or log.chunks:
            orphans.append(log)

    states_by_id[pool_id] = weakref.ref(state, gone)



def fault(where: str, exc: Exception) -> None:
    """The guard's behaviour, inline: ``guarded()`` (a generator context manager) costs about 1.5 µs,
    a visible share of a process pool's round trip (benchmark group workers.process.roundtrip)."""
    if raise_internal_errors():
        raise exc
    log_once(("fault", where, type(exc).__name__),
             "otel-perf internal error in %s (%s: %s); the program continues, this measurement is skipped.",
             where, type(exc).__name__, exc, exc_info=True)


_custom: dict[str, PoolState] = {}
_ids = iter(range(1, 1 << 62))
_lock = threading.Lock()


class PoolState:
    """One pool: name, kind, its :class:`JobLog`, and how to read depth, busy, limit and worker memory.

    Finished jobs are logged raw: ``done`` gets ``(wait, run)``, or ``(wait, run, error.type)`` for a
    failed job, one ``list.append`` (atomic, no lock) by the thread that ran the job (thread pools) or
    received its result (process pools). :meth:`fold` records the log into the histogram series in bulk
    before every publication, and in between when it reaches :data:`FOLD_AT` entries (process pools) or
    :data:`FOLD_BUSY_AT` (thread pools: their workers must not delay results with it). Recording each job into two
    series as it ends cost about 2.5 µs of a 65 µs thread-pool round trip (cold caches in a just-woken
    thread: four times its cost in a loop); the append costs a fraction of that (benchmark group
    ``workers.thread.roundtrip.paired``). ``done`` and ``begun`` are the log's own lists, kept here too so
    that the hot path reaches them with one attribute lookup.

    Thread pools also log each job's start in ``begun``: busy workers are the jobs begun and not done.
    ``running`` holds the ``otel_perf.job`` scopes in progress (user pools). ``outstanding`` counts jobs
    submitted and not yet finished for ``multiprocessing`` pools, whose own state counts tasks (chunks)
    rather than jobs. ``snapshot_per_job``: the pool's worker processes were started before otel-perf saw
    the pool, so they did not get the ``configure()`` snapshot through their initializer and its jobs
    carry it (see ``_workers_trampoline.job_info``); ``ready``: that was decided (at the pool's first use).
    """

    __slots__ = ("__weakref__", "_lock", "_pool", "begun", "done", "id", "ignored", "kind", "log", "name",
                 "outstanding", "queues", "ready", "running", "snapshot_per_job", "source")

    def __init__(self, pool: Any, kind: str, source: str, name: str) -> None:
        self.id = next(_ids)
        self._pool: Callable[[], Any] = weakref.ref(pool) if pool is not None else (lambda: None)
        self.kind = kind
        self.source = source
        self.ignored = False
        self.snapshot_per_job = False
        self.ready = False  # process pools: its worker processes' set-up was decided (workers.py)
        self.running: dict[int, Any] = {}
        self.log = JobLog()
        self.begun = self.log.begun
        self.done = self.log.done
        self.outstanding = 0
        self.queues: list[Callable[[], Any]] = []
        self._lock = threading.Lock()
        self.name = ""
        self.rename(name)

    @property
    def attrs(self) -> dict[str, str]:
        """``otel_perf.pool.name`` and ``otel_perf.pool.kind``."""
        return self.log.attrs

    @property
    def wait(self) -> Series:
        return self.log.wait

    @property
    def ok(self) -> Series:
        return self.log.ok

    def rename(self, name: str) -> None:
        """Use ``name`` for everything recorded from now on."""
        if self.name:
            self.fold()  # what was logged under the old name stays under it
        self.name = name
        self.log.use({POOL_NAME: name, POOL_KIND: self.kind})

    def error_series(self, error: str) -> Series:
        """The job-duration series of outcome ``error`` for ``error.type`` = ``error``."""
        return self.log.error_series(error)

    def fold(self, wait: bool = True) -> None:
        """Record the logged jobs into the series (:meth:`JobLog.fold`)."""
        self.log.fold(wait)

    def forget_log(self) -> None:
        """In a forked child: the log is the parent's (:meth:`JobLog.forget`)."""
        self.log.forget()
        self.begun = self.log.begun
        self.done = self.log.done

    def jobs_running(self) -> int:
        """Jobs begun and not done (thread pools)."""
        return self.log.running()

    def record_cancelled(self) -> None:
        """A job cancelled before it ran: it counts with outcome ``cancelled`` and no run time."""
        JOB_DURATION.series({**self.attrs, JOB_OUTCOME: OUTCOME_CANCELLED}).record(0.0)

    def add_outstanding(self, n: int) -> None:
        with self._lock:
            self.outstanding = max(0, self.outstanding + n)

    def record_rejected(self) -> None:
        counter = runtime.rejected
        if counter is not None:
            counter.add(1, self.attrs)

    # --- state read at collection time ---------------------------------------------------------------

    def pool(self) -> Any:
        return self._pool()

    def limit(self) -> int | None:
        pool = self.pool()
        if pool is None:
            return None
        if self.source in _EXECUTOR_SOURCES:
            return int(pool._max_workers)
        if self.source in (SOURCE_MP, SOURCE_MP_THREAD):
            return int(pool._processes)
        return None

    def _process_pending(self, pool: Any) -> tuple[int, int]:
        """(jobs not yet finished, live worker processes) of a process pool."""
        if self.source in _PROCESS_EXECUTOR_SOURCES:
            pending = len(pool._pending_work_items)
            processes = len(pool._processes or ())
        else:
            from multiprocessing.pool import RUN

            pending = self._mp_outstanding(pool) if pool._state == RUN else 0
            processes = sum(1 for p in list(pool._pool) if p.exitcode is None)
        return pending, processes

    def _mp_outstanding(self, pool: Any) -> int:
        """Jobs submitted and not finished, for ``multiprocessing`` pools.

        Items of a chunk after a failing item never run and so are never counted off; once the pool has
        no pending result left (its ``_cache`` is empty), nothing is outstanding, whatever the count says.
        """
        if not pool._cache:
            with self._lock:
                self.outstanding = 0
        return self.outstanding

    def busy(self) -> int | None:
        """Workers running a job. Process pools: unfinished jobs, at most one per live worker."""
        pool = self.pool()
        if self.source == SOURCE_CUSTOM:
            return len(self.running)
        if self.source in (SOURCE_TPE, SOURCE_MP_THREAD):
            return self.jobs_running() if pool is not None else None
        if pool is None:
            return None
        pending, processes = self._process_pending(pool)
        return min(pending, processes)

    def depth(self) -> int | None:
        """Jobs waiting for a worker."""
        pool = self.pool()
        if self.source == SOURCE_CUSTOM:
            total = 0
            for ref in list(self.queues):
                queue = ref()
                if queue is not None:
                    total += int(queue.qsize())
            return total
        if pool is None:
            return None
        if self.source == SOURCE_TPE:
            return _thread_executor_depth(pool)
        if self.source == SOURCE_MP_THREAD:
            return max(0, self._mp_outstanding(pool) - self.jobs_running())
        pending, processes = self._process_pending(pool)
        return max(0, pending - min(pending, processes))

    def worker_pids(self) -> list[int]:
        pool = self.pool()
        if pool is None:
            return []
        if self.source in _PROCESS_EXECUTOR_SOURCES:
            return [pid for pid in list((pool._processes or {}).keys())]
        if self.source == SOURCE_MP:
            return [p.pid for p in list(pool._pool) if p.pid is not None and p.exitcode is None]
        return []


def _thread_executor_depth(pool: Any) -> int:
    """Jobs waiting in a ``ThreadPoolExecutor``'s work queue, without its wake-up sentinels.

    The queue also carries ``None`` sentinels that wake the worker threads to exit: ``shutdown()`` puts
    one (and each exiting worker puts one back), and at interpreter exit ``concurrent.futures`` puts one
    more per thread. Once every thread has ended, nothing in the queue will ever run: the depth is 0.
    """
    queued = int(pool._work_queue.qsize())
    exiting = bool(getattr(sys.modules.get("concurrent.futures.thread"), "_shutdown", False))
    if not (pool._shutdown or exiting):
        return queued
    threads = list(pool._threads)
    if not any(thread.is_alive() for thread in threads):
        return 0
    sentinels = (1 if pool._shutdown else 0) + (len(threads) if exiting else 0)
    return max(0, queued - sentinels)


def state_for(pool: Any, *, by_user: bool = False) -> PoolState:
    """The state of ``pool``, created (and registered) at its first use.

    Args:
        pool: the pool.
        by_user: the user names the pool (``name_pool``): never treated as an internal pool.
    """
    try:
        found: PoolState = pool.__dict__[_STATE_ATTR]
        return found
    except KeyError:
        pass
    internal = False if by_user else created_internally()
    with _lock:
        found = pool.__dict__.get(_STATE_ATTR)
        if found is None:
            kind, source = source_of(pool)
            found = PoolState(pool, kind, source, default_name(pool, source))
            found.ignored = internal
            pool.__dict__[_STATE_ATTR] = found
            if not internal:
                _register(found)
    return found


def custom_state(name: str) -> PoolState:
    """The state of the user's own pool called ``name`` (``otel_perf.job``, ``track_queue``)."""
    found = _custom.get(name)
    if found is None:
        with _lock:
            found = _custom.get(name)
            if found is None:
                found = PoolState(None, POOL_KIND_CUSTOM, SOURCE_CUSTOM, name)
                _custom[name] = found
                _register(found)
    return found


def live_states() -> list[PoolState]:
    return [state for ref in list(states_by_id.values()) if (state := ref()) is not None]


def unpublished() -> bool:
    """Whether this process holds pool jobs it has not published yet (a pool worker flushes its metrics
    after a job that ran pools of its own): logged, handed over by a pool that is gone, or folded since the
    last publication."""
    return _workers_joblog.folded or bool(orphans) or any(state.done or state.log.chunks for state in live_states())


def _fold_all() -> None:
    """Before the job histograms publish: fold every live pool's log and the logs of pools that are gone
    (see :class:`PoolState` and the module docstring); a gone pool's log is then dropped."""
    for state in live_states():
        state.fold()
    while orphans:
        try:
            log = orphans.pop()
        except IndexError:  # another publication took the last one
            break
        log.fold()
    _workers_joblog.folded = False  # the publication that called this follows at once


JOB_WAIT.add_drain(_fold_all)
JOB_DURATION.add_drain(_fold_all)


#: ``error.type`` of an exception (``otel_perf._error_type``): the one spelling of every instrumentation.
error_type = error_type_of


def _after_fork_in_child() -> None:
    # A forked worker reports its own process: its parent's pools stay the parent's (DESIGN.md).
    global _lock
    _lock = threading.Lock()
    for state in live_states():
        state.forget_log()
    states_by_id.clear()
    orphans.clear()
    _custom.clear()
    _workers_joblog.folded = False


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
