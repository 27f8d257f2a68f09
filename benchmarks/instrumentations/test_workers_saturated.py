"""Worker pools kept busy: time per job, instrumented over bare, interleaved in one run (issue 20, part 2).

A pool serving load rarely sees one job at a time: bursts are submitted at once and the jobs queue. Each
case here submits a burst to a pool, waits for all of it, and divides by the jobs; the variants of a group
run in rotating order, round after round (``test_workers._rotating``), so the machine's drift falls on all
of them alike, and each budget is the median of the per-round ratios.

* ``workers.saturated.thread.*``: a ``ThreadPoolExecutor(2)`` given bursts of no-op jobs (1000 a burst),
  50 µs jobs (400) and 1 ms jobs (40). The jobs spin on ``perf_counter`` for their duration (CPU work, as
  the pools of a parser or an agent's tools run it; a sleep would add the scheduler's jitter, several
  times the 0.5 % budget of the 1 ms case). Variants: the original ``submit`` (``bare``), the instrumented
  one with spans off, on and ``slow`` (``OTEL_PERF_POOL_SPANS=slow`` at the default threshold, which no
  job reaches), and the original one running a job that makes the identical span itself (``direct``: the
  spans-on budget is that + 10 %).
* ``workers.saturated.process.*``: a ``ProcessPoolExecutor(2)`` (fork), bursts of no-op jobs (200) and
  1 ms jobs (40), through the original ``submit`` (stdlib pickling of call items, as an uninstrumented
  program has it) and the instrumented one, spans off, on and slow.
* ``workers.saturated.pool_map``: ``multiprocessing.Pool(2).map`` of 10 000 small items with the default
  chunk size, through the original ``Pool._map_async`` and the instrumented one, spans off, on and slow.

Run: ``.venv/bin/python -m pytest benchmarks/instrumentations/test_workers_saturated.py --benchmark-enable``.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import multiprocessing.pool
import statistics
import time
import types
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from benchmarks.instrumentations.test_workers import _Env, _instrumented, _measure, _report
from otel_perf._semconv import CODE_FUNCTION_NAME, JOB_WAIT_DURATION, POOL_KIND, POOL_NAME
from otel_perf.instrumentations._workers_state import runtime
from otel_perf.instrumentations._workers_trampoline import compact_call_items

#: Jobs per burst, by job duration: each burst lasts about 10-20 ms on the two workers.
THREAD_BURSTS = {"noop": 1000, "50us": 400, "1ms": 40}
PROCESS_BURSTS = {"noop": 200, "1ms": 40}
MAP_ITEMS = 10_000
#: OTEL_PERF_POOL_SPAN_MIN_DURATION's default: in the ``spans_slow`` variants no job reaches it (what slow
#: mode costs a pool whose jobs are all fast).
SLOW_DEFAULT = 0.01


def noop() -> None:
    return None


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def spin_50us() -> None:
    _spin(50e-6)


def spin_1ms() -> None:
    _spin(1e-3)


def square(x: int) -> int:
    return x * x


JOBS: dict[str, Callable[[], None]] = {"noop": noop, "50us": spin_50us, "1ms": spin_1ms}


def _with_own_span(env: _Env, job: Callable[[], None]) -> Callable[[], None]:
    """``job`` making, itself, the span otel-perf would give it (name, kind, attributes, the submitter's
    span as parent, made current while the job runs)."""
    tracer = env.tracer_provider.get_tracer("bench")
    parent = trace.set_span_in_context(env.parent)
    attributes: dict[str, Any] = {POOL_NAME: "ThreadPoolExecutor", POOL_KIND: "thread",
                  CODE_FUNCTION_NAME: f"{job.__module__}.{job.__qualname__}", JOB_WAIT_DURATION: 0.00002}

    def own_span() -> None:
        span = tracer.start_span(f"ThreadPoolExecutor {job.__name__}", context=parent, kind=SpanKind.INTERNAL,
                                 attributes=attributes)
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            job()
        finally:
            otel_context.detach(token)
            span.end()

    return own_span


def _burst(submit: Callable[..., cf.Future[Any]], job: Callable[[], None], jobs: int) -> float:
    """Seconds per job of a burst of ``jobs`` submitted at once, waited for together."""
    start = time.perf_counter()
    cf.wait([submit(job) for _ in range(jobs)])
    return (time.perf_counter() - start) / jobs


def _ratio(samples: dict[str, list[float]], a: str, b: str) -> float:
    return round(statistics.median(x / y for x, y in zip(samples[a], samples[b], strict=True)), 4)


def _summary(samples: dict[str, list[float]], per: str, digits: int = 2) -> dict[str, Any]:
    """Every case over bare (median of the per-round ratios) and the median time of bare, spans off and
    spans on per ``per`` (job or item), in µs."""
    summary: dict[str, Any] = {f"{name}_vs_bare": _ratio(samples, name, "bare")
                               for name in ("spans_off", "spans_on", "spans_slow")}
    summary.update({f"{name}_us_per_{per}": round(statistics.median(samples[name]) * 1e6, digits)
                    for name in ("bare", "spans_off", "spans_on")})
    return summary


def _measure_modes(benchmark: Any, stop: Callable[[], None], bare: Callable[[], float],
                   instrumented: Callable[[bool, float | None], float], rounds: int, warmup: int,
                   *others: tuple[str, Callable[[], float]]) -> dict[str, list[float]]:
    """``bare``, then ``instrumented`` with spans off, on and slow (no job reaching the threshold), and
    ``others``, interleaved (``_measure``); the span modes are reset and instrumentation stopped after."""
    cases: list[tuple[str, Callable[[], float]]] = [
        ("bare", bare),
        ("spans_off", lambda: instrumented(False, None)),
        ("spans_on", lambda: instrumented(True, None)),
        ("spans_slow", lambda: instrumented(False, SLOW_DEFAULT)),
        *others,
    ]
    try:
        return _measure(benchmark, cases, rounds if benchmark.enabled else 2, warmup=warmup)
    finally:
        runtime.spans, runtime.slow = False, None
        stop()


@pytest.mark.parametrize("kind", list(THREAD_BURSTS))
def test_thread_pool_saturated_paired(benchmark: Any, env: _Env, under_parent: None, capsys: Any,
                                      kind: str) -> None:
    """A busy ThreadPoolExecutor: bare, spans off, spans on, and bare with the job making its own span."""
    benchmark.group = f"workers.saturated.thread.{kind}"
    job, jobs = JOBS[kind], THREAD_BURSTS[kind]
    direct = _with_own_span(env, job)
    pool = env.thread_pool
    bare_submit = types.MethodType(type(pool).submit, pool)
    stop = _instrumented(env, spans=False)
    instrumented_submit = pool.submit

    def run(submit: Callable[..., cf.Future[Any]], fn: Callable[[], None], spans: bool,
            slow: float | None = None) -> float:
        runtime.spans, runtime.slow = spans, slow
        return _burst(submit, fn, jobs)

    samples = _measure_modes(benchmark, stop, lambda: run(bare_submit, job, False),
                             lambda spans, slow: run(instrumented_submit, job, spans, slow), 40, 3,
                             ("direct", lambda: run(bare_submit, direct, False)))
    _report(benchmark, capsys, f"workers.saturated.thread.{kind}", {
        **_summary(samples, "job"),
        "spans_on_vs_job_own_span": _ratio(samples, "spans_on", "direct"),
        "job_own_span_vs_bare": _ratio(samples, "direct", "bare"),
        "jobs_per_burst": jobs,
    })


@pytest.mark.parametrize("kind", list(PROCESS_BURSTS))
def test_process_pool_saturated_paired(benchmark: Any, env: _Env, under_parent: None, capsys: Any,
                                       kind: str) -> None:
    """A busy ProcessPoolExecutor (fork): bare (the stdlib's submit and pickling), spans off, spans on."""
    benchmark.group = f"workers.saturated.process.{kind}"
    job, jobs = JOBS[kind], PROCESS_BURSTS[kind]
    pool = env.process_pool
    bare_submit = types.MethodType(type(pool).submit, pool)
    stop = _instrumented(env, spans=False)
    instrumented_submit = pool.submit

    def bare() -> float:
        compact_call_items(False)  # an uninstrumented program pickles call items the stdlib's way
        return _burst(bare_submit, job, jobs)

    def instrumented(spans: bool, slow: float | None) -> float:
        compact_call_items(True)
        runtime.spans, runtime.slow = spans, slow
        return _burst(instrumented_submit, job, jobs)

    samples = _measure_modes(benchmark, stop, bare, instrumented, 40, 3)
    _report(benchmark, capsys, f"workers.saturated.process.{kind}", {**_summary(samples, "job"),
                                                                      "jobs_per_burst": jobs})


@pytest.fixture(scope="module")
def mp_pool(env: _Env) -> Iterator[multiprocessing.pool.Pool]:
    pool = mp.get_context("fork").Pool(2)
    pool.map(square, range(10))  # workers started before instrumenting, as env's executor
    yield pool
    pool.terminate()
    pool.join()


def test_pool_map_saturated_paired(benchmark: Any, env: _Env, under_parent: None, capsys: Any,
                                   mp_pool: multiprocessing.pool.Pool) -> None:
    """``Pool.map`` of 10 000 small items (default chunk size): bare (``Pool._map_async`` as the stdlib
    has it, which ``Pool.map`` calls), spans off, spans on; seconds per item."""
    benchmark.group = "workers.saturated.pool_map"
    original = multiprocessing.pool.Pool._map_async  # type: ignore[attr-defined]
    mapstar = multiprocessing.pool.mapstar  # type: ignore[attr-defined]
    items = list(range(MAP_ITEMS))
    stop = _instrumented(env, spans=False)

    def bare() -> float:
        start = time.perf_counter()
        original(mp_pool, square, items, mapstar, None).get()
        return (time.perf_counter() - start) / MAP_ITEMS

    def instrumented(spans: bool, slow: float | None) -> float:
        runtime.spans, runtime.slow = spans, slow
        start = time.perf_counter()
        mp_pool.map(square, items)
        return (time.perf_counter() - start) / MAP_ITEMS

    samples = _measure_modes(benchmark, stop, bare, instrumented, 30, 2)
    _report(benchmark, capsys, "workers.saturated.pool_map", {**_summary(samples, "item", digits=3),
                                                               "items": MAP_ITEMS})
