"""The probes of the parsers instrumentation: what each parser name's wrappers record into.

Why this module exists: the parse wrappers (``_parse_wrappers.py``) must cost almost nothing, so each parse
only appends its duration and size to its parser's :class:`Probe`; the probe folds those logs into the
session's aggregated histograms in bulk (every :data:`FOLD_AT` parses and before each publication), and
emits a span after the fact for a slow or large parse. One :class:`ParseSession` per ``instrument()``
holds the histograms, the tracer and the thresholds; a probe outlives sessions (a decorated function keeps
its probe) and is rebound to each new one.
"""

from __future__ import annotations

import os
import threading
from time import perf_counter, time_ns
from typing import Any, Final

from opentelemetry.metrics import Meter
from opentelemetry.trace import Status, StatusCode, Tracer

from otel_perf._aggregate import AggregatedHistogram, Series, take
from otel_perf._config import Settings
from otel_perf._error_type import error_type_of
from otel_perf._safety import guarded
from otel_perf._semconv import (
    DURATION_BOUNDARIES,
    ERROR_TYPE,
    PARSE_DURATION,
    PARSE_INPUT_SIZE,
    PARSE_SIZE,
    PARSE_SPAN_NAME,
    PARSER_NAME,
    SIZE_BOUNDARIES,
    metric,
)

__all__ = ["FOLD_AT", "UNKNOWN", "ParseSession", "Probe", "end_session", "probe", "record_fault", "start_session"]

UNKNOWN: Final = -1  # size not cheaply knowable: no size measurement, never "large"
FOLD_AT: Final = 256  # a probe's logs are folded into its series at this many parses (about 16 KB)


class ParseSession:
    """One ``instrument()`` of the parsers: its histograms, tracer and span thresholds."""

    def __init__(self, tracer: Tracer, meter: Meter, settings: Settings) -> None:
        duration, size = metric(PARSE_DURATION), metric(PARSE_SIZE)
        self.duration = AggregatedHistogram(duration.name, duration.unit, duration.description,
                                            DURATION_BOUNDARIES)
        self.size = AggregatedHistogram(size.name, size.unit, size.description, SIZE_BOUNDARIES)
        self.tracer = tracer
        self.min_duration = float(settings.parse_span_min_duration)
        self.min_bytes = int(settings.parse_span_min_bytes)
        self._meter = meter
        self.duration.bind(meter)
        self.size.bind(meter)
        self.duration.add_drain(_fold_all)
        self.size.add_drain(_fold_all)

    def close(self) -> None:
        # Hand what was recorded since the last collection to the SDK first, so that the final
        # collection of a shutdown still exports it.
        for histogram in (self.duration, self.size):
            with guarded("parsers: final publication"):
                histogram.publish()
            histogram.unbind(self._meter)


class Probe:
    """What the wrappers of one parser name record into; rebound to the session at each instrument().

    The hot path reads ``on``, ``min_duration`` and ``min_bytes``, appends the duration to ``durations``
    and a known size to ``sizes`` (``list.append`` is atomic: no lock, no thread-local lookup, and the two
    histograms need no pairing, so no tuple either). :meth:`fold` records the logs into the session's
    series in bulk when ``durations`` holds :data:`FOLD_AT` entries and before every publication.
    Recording each parse into two series as it ended cost about 0.7 µs in a loop, against a +3% budget of
    about 1.3 µs for a whole argparse parse (benchmarks/instrumentations/test_parsers.py).
    """

    __slots__ = ("_errors", "_fold_lock", "_session", "duration", "durations", "min_bytes", "min_duration",
                 "name", "on", "size", "sizes", "span_name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.span_name = PARSE_SPAN_NAME.format(name)
        self.on = False
        self.duration: Series | None = None
        self.size: Series | None = None
        self.min_duration = 0.0
        self.min_bytes = 0
        self._errors: dict[str, Series] = {}
        self._session: ParseSession | None = None
        self.durations: list[float] = []
        self.sizes: list[int] = []
        self._fold_lock = threading.Lock()

    def activate(self, session: ParseSession) -> None:
        self.fold()  # what was logged in the previous session stays in it
        # The series are created at the first fold (see _series): a parser that is never called adds
        # no series for the collections to walk.
        self.duration = self.size = None
        self.min_duration = session.min_duration
        self.min_bytes = session.min_bytes
        self._errors = {}
        self._session = session
        self.on = True

    def _series(self) -> tuple[Series, Series]:
        session = self._session
        assert session is not None  # activate() set it before any call can get here
        duration, size = self.duration, self.size
        if duration is None or size is None:
            attributes = {PARSER_NAME: self.name}
            duration = session.duration.series(attributes)  # thread-safe: one series per attribute set
            size = session.size.series(attributes)
            if self._session is session:  # not re-activated meanwhile by another instrument()
                self.duration, self.size = duration, size
        return duration, size

    def fold(self, wait: bool = True) -> None:
        """Record the logged parses into the series.

        Args:
            wait: wait for a fold running in another thread (publication, which must see everything
                logged before it). The hot path passes False and leaves the log to the running fold.
        """
        lock = self._fold_lock
        if not lock.acquire(wait):
            return
        try:
            durations = take(self.durations)
            sizes = take(self.sizes)
        finally:
            lock.release()
        if not (durations or sizes) or self._session is None:
            return
        duration, size = self._series()
        duration.record_many(durations)
        size.record_many(sizes)

    def forget_log(self) -> None:
        """In a forked child: the logs are the parent's, and its lock may have been held by a parent thread
        (replace it rather than acquire it)."""
        self.durations = []
        self.sizes = []
        self._fold_lock = threading.Lock()

    def deactivate(self) -> None:
        self.on = False
        self.fold()

    def failed(self, elapsed: float, end: float, size: int, exc: BaseException) -> None:
        """Record a parse that raised ``exc`` (the caller re-raises it, untouched)."""
        with guarded(f"parsers: recording a failed {self.name} parse"):
            session = self._session
            if session is None:
                return
            duration, size_series = self._series()
            if isinstance(exc, SystemExit) and exc.code in (0, None):
                error_type = None  # argparse's --help/--version: a successful parse that exits
                series = duration
            else:
                error_type = error_type_of(exc)
                found = self._errors.get(error_type)
                if found is None:
                    found = session.duration.series({PARSER_NAME: self.name, ERROR_TYPE: error_type})
                    self._errors[error_type] = found
                series = found
            series.record(elapsed)
            if size >= 0:
                size_series.record(size)
            if elapsed > self.min_duration or size > self.min_bytes:
                self.span(elapsed, end, size, error_type)

    def span(self, elapsed: float, end: float, size: int, error_type: str | None) -> None:
        """Emit the span of a finished parse: true start and end time, child of the current span."""
        session = self._session
        if session is None:
            return
        # perf_counter() times the parse; the wall clock places it: now, minus the time since it ended.
        end_ns = time_ns() - int((perf_counter() - end) * 1e9)
        start_ns = end_ns - int(elapsed * 1e9)
        attributes: dict[str, Any] = {PARSER_NAME: self.name}
        if size >= 0:
            attributes[PARSE_INPUT_SIZE] = size
        if error_type is not None:
            attributes[ERROR_TYPE] = error_type
        span = session.tracer.start_span(self.span_name, start_time=start_ns, attributes=attributes)
        if error_type is not None:
            span.set_status(Status(StatusCode.ERROR, error_type))
        span.end(end_time=end_ns)


_lock = threading.Lock()
_probes: dict[str, Probe] = {}
_session: ParseSession | None = None


def _forget_logs() -> None:
    # A forked child starts from empty series (_aggregate resets them): the parent's logged parses stay
    # the parent's.
    for probe in _probes.values():
        probe.forget_log()


def _fold_all() -> None:
    """Before the parse histograms publish: fold every probe's logs."""
    for probe in list(_probes.values()):
        probe.fold()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_logs)


def probe(name: str) -> Probe:
    """The probe of parser ``name``, created once; active at once when a session is running."""
    with _lock:
        found = _probes.get(name)
        if found is None:
            found = _probes[name] = Probe(name)
            if _session is not None:
                found.activate(_session)
        return found


def record_fault(where: str, exc: Exception) -> None:
    # A fault of ours after the parse returned: logged once and swallowed (re-raised under our tests).
    with guarded(where):
        raise exc


def start_session(session: ParseSession) -> None:
    """Make ``session`` the running one: every probe, existing or made later, records into it."""
    global _session
    with _lock:
        _session = session
        for found in _probes.values():
            found.activate(session)


def end_session(session: ParseSession) -> None:
    """Stop ``session`` if it is still the running one: every probe folds its logs and goes off."""
    global _session
    with _lock:
        if _session is session:
            _session = None
            for found in _probes.values():
                found.deactivate()
