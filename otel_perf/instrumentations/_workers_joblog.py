"""A pool's finished jobs: logged raw on the hot path, folded into the job histograms in bulk.

Why this module exists: job wait and run durations are hot-path measurements (DESIGN.md, "Hot paths"). The
thread that ran a job (thread pools) or received its result (process pools) appends one
:data:`Entry` to its pool's :class:`JobLog`; the log is folded into the
:class:`~otel_perf._aggregate.AggregatedHistogram` series when it holds :data:`FOLD_AT` entries and
before every publication. A log outlives its pool: a pool that is gone hands its log to :data:`orphans`,
and the next publication folds and publishes it (``_workers_state``).
"""

from __future__ import annotations

import threading
from typing import Any, Final

from otel_perf._aggregate import AggregatedHistogram, Series, take
from otel_perf._semconv import (
    DURATION_BOUNDARIES,
    ERROR_TYPE,
    JOB_OUTCOME,
    OUTCOME_ERROR,
    OUTCOME_OK,
    POOL_JOB_DURATION,
    POOL_JOB_WAIT_DURATION,
    metric,
)

__all__ = ["ENTRY_ERROR", "ENTRY_RUN", "ENTRY_WAIT", "FOLD_AT", "FOLD_BUSY_AT", "JOB_DURATION", "JOB_WAIT", "Entry",
           "JobLog",
           "orphans"]

#: A finished job as a pool logs it (:class:`JobLog`): (wait seconds, run seconds[, error.type]). A plain
#: tuple, read by the index names below: a process job's entry crosses the pipe inside its result, where a
#: tuple pickles and unpickles in C and a NamedTuple's unpickling runs a Python ``__new__``.
Entry = tuple[Any, ...]
ENTRY_WAIT: Final = 0
ENTRY_RUN: Final = 1
ENTRY_ERROR: Final = 2  # present only for a job that failed

JOB_WAIT = AggregatedHistogram(POOL_JOB_WAIT_DURATION, "s", metric(POOL_JOB_WAIT_DURATION).description,
                               DURATION_BOUNDARIES)
JOB_DURATION = AggregatedHistogram(POOL_JOB_DURATION, "s", metric(POOL_JOB_DURATION).description,
                                   DURATION_BOUNDARIES)

#: A process pool's log of finished jobs is folded into its series when it holds this many entries (about
#: 30 KB), by the thread that receives results (not a job's).
FOLD_AT = 256
#: A thread pool's log is folded at publication (in the metric reader's thread), and by a worker only when
#: it holds this many entries (about 2 MB), which bounds its memory: a fold on a worker delays the result
#: of the job that ran there, and everyone waiting for it (benchmark group ``workers.saturated.thread.*``).
FOLD_BUSY_AT = 16384

#: Jobs were folded into the series since the last publication (``_workers_state.unpublished``).
folded = False


class JobLog:
    """A pool's finished jobs, logged raw, and the series they are folded into.

    Separate from :class:`PoolState` so that it can outlive its pool: when the pool is gone, its log
    waits in :data:`orphans` for the next publication, which folds it (:meth:`fold`) and publishes it.
    """

    __slots__ = ("_begun_total", "_done_total", "_errors", "_fold_lock", "attrs", "begun", "chunks", "done",
                 "ok", "wait")

    def __init__(self) -> None:
        self.begun: list[float] = []
        self.done: list[Entry] = []
        #: Chunks of items that ran as one task and are timed as one (``Pool.map``, spans off): (wait,
        #: run seconds of each item, items). One append per chunk; see ``_workers_trampoline.chunk_job``.
        self.chunks: list[tuple[float, float, int]] = []
        self._begun_total = 0
        self._done_total = 0
        self._fold_lock = threading.Lock()
        self.attrs: dict[str, str] = {}
        self.wait: Series
        self.ok: Series
        self._errors: dict[str, Series] = {}

    def use(self, attrs: dict[str, str]) -> None:
        """Fold into the series of ``attrs`` from now on (a pool named or renamed)."""
        self.attrs = attrs
        self.wait = JOB_WAIT.series(attrs)
        self.ok = JOB_DURATION.series({**attrs, JOB_OUTCOME: OUTCOME_OK})
        self._errors = {}

    def error_series(self, error: str) -> Series:
        """The job-duration series of outcome ``error`` for ``error.type`` = ``error``."""
        found = self._errors.get(error)
        if found is None:
            found = JOB_DURATION.series({**self.attrs, JOB_OUTCOME: OUTCOME_ERROR, ERROR_TYPE: error})
            self._errors[error] = found
        return found

    def fold(self, wait: bool = True) -> None:
        """Record the logged jobs into the series and count them off.

        Args:
            wait: wait for a fold running in another thread (publication, to publish everything logged
                before it). The hot path passes False: a worker never waits for another, and one that
                finds a fold running leaves the log to it or to the next job.
        """
        lock = self._fold_lock
        if not lock.acquire(wait):
            return
        try:
            batch = take(self.done)
            chunks = take(self.chunks) if self.chunks else None
            self._done_total += len(batch)
            self._begun_total += len(take(self.begun))
        finally:
            lock.release()
        if chunks:
            self._fold_chunks(chunks)
        if not batch:
            return
        global folded
        folded = True
        self.wait.record_many([entry[ENTRY_WAIT] for entry in batch])
        runs = [entry[ENTRY_RUN] for entry in batch if len(entry) <= ENTRY_ERROR]
        self.ok.record_many(runs)
        if len(runs) < len(batch):
            for entry in batch:
                if len(entry) > ENTRY_ERROR:
                    self.error_series(entry[ENTRY_ERROR]).record(entry[ENTRY_RUN])

    def _fold_chunks(self, chunks: list[tuple[float, float, int]]) -> None:
        # Each item of a chunk is recorded with the chunk's wait and its share of the chunk's run time: the
        # lists are made and sorted in C, a few nanoseconds an item (about 1.2 µs an item for Pool.map).
        global folded
        folded = True
        self._done_total += sum(chunk[2] for chunk in chunks)
        waits: list[float] = []
        runs: list[float] = []
        for wait, run, items in chunks:
            waits += [wait] * items
            runs += [run] * items
        self.wait.record_many(waits)
        self.ok.record_many(runs)

    def forget(self) -> None:
        """In a forked child: the log is the parent's, and its lock may have been held by a parent thread
        (replace it rather than acquire it)."""
        self._fold_lock = threading.Lock()
        self.done = []
        self.chunks = []
        self.begun = []
        self._done_total = self._begun_total = 0

    def running(self) -> int:
        """Jobs begun and not done (thread pools)."""
        with self._fold_lock:
            # done before begun: a job logs its start before its end, so this never goes below zero.
            done = self._done_total + len(self.done)
            begun = self._begun_total + len(self.begun)
        return max(0, begun - done)


#: Logs of pools that are gone, waiting for the next publication to fold them (see the module docstring).
orphans: list[JobLog] = []
