"""The pool instruments: the observable ones read each live pool's state at collection, the job histograms.

Why this module exists: queue depth, busy workers, the worker limit and worker memory are not counted on
the hot path at all; observable instruments read them from each pool's own state (its work queue, its
pending work items, its worker processes) when the SDK collects, through
:meth:`~otel_perf.instrumentations._workers_state.PoolState.depth` and friends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from otel_perf._safety import guarded
from otel_perf._semconv import (
    POOL_JOB_REJECTED,
    POOL_JOB_RETRIES,
    POOL_QUEUE_DEPTH,
    POOL_WORKER_BUSY,
    POOL_WORKER_LIMIT,
    POOL_WORKER_MEMORY_MAX,
    metric,
)
from otel_perf.instrumentations._workers_joblog import JOB_DURATION, JOB_WAIT
from otel_perf.instrumentations._workers_state import PoolState, live_states, runtime

__all__ = ["create_instruments", "release_instruments"]


def _observations(read: Callable[[PoolState], int | None]) -> Iterable[Observation]:
    out: list[Observation] = []
    if not runtime.active:
        return out  # uninstrumented: the instruments stay on the meter but report nothing
    for state in live_states():
        with guarded(f"reading {read.__name__} of pool {state.name}"):
            value = read(state)
            if value is not None:
                out.append(Observation(value, state.attrs))
    return out


def _observe_depth(options: CallbackOptions) -> Iterable[Observation]:
    return _observations(PoolState.depth)


def _observe_busy(options: CallbackOptions) -> Iterable[Observation]:
    return _observations(PoolState.busy)


def _observe_limit(options: CallbackOptions) -> Iterable[Observation]:
    return _observations(PoolState.limit)


def _max_rss(state: PoolState) -> int | None:
    pids = state.worker_pids()
    if not pids:
        return None
    import psutil

    largest = None
    for pid in pids:
        try:
            rss = int(psutil.Process(pid).memory_info().rss)
        except (psutil.Error, OSError):
            continue  # the worker ended between listing and reading
        largest = rss if largest is None else max(largest, rss)
    return largest


def _observe_memory(options: CallbackOptions) -> Iterable[Observation]:
    return _observations(_max_rss)


def create_instruments(meter: Meter) -> None:
    """Create the pool instruments on ``meter`` and bind the job histograms to it."""
    for name, callback in ((POOL_QUEUE_DEPTH, _observe_depth), (POOL_WORKER_BUSY, _observe_busy),
                           (POOL_WORKER_LIMIT, _observe_limit)):
        spec = metric(name)
        meter.create_observable_up_down_counter(name, callbacks=[callback], unit=spec.unit,
                                                description=spec.description)
    spec = metric(POOL_WORKER_MEMORY_MAX)
    meter.create_observable_gauge(POOL_WORKER_MEMORY_MAX, callbacks=[_observe_memory], unit=spec.unit,
                                  description=spec.description)
    for name, attr in ((POOL_JOB_REJECTED, "rejected"), (POOL_JOB_RETRIES, "retries")):
        spec = metric(name)
        setattr(runtime, attr, meter.create_counter(name, unit=spec.unit, description=spec.description))
    JOB_WAIT.bind(meter)
    JOB_DURATION.bind(meter)


def release_instruments(meter: Meter) -> None:
    JOB_WAIT.unbind(meter)
    JOB_DURATION.unbind(meter)
    runtime.rejected = None
    runtime.retries = None
