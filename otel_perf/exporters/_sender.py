"""The sender of durable export: one daemon thread per exporter sends its signal's spool entries in order.

Why this module exists: ``durable.py``'s exporters only write to the spool; the network is this thread's,
so a backend that hangs holds no thread of the SDK's. A pass sends the spool's entries oldest first
through the exporter's transport (``_transport.py``), removes each once the backend accepted it (or
rejected it for good, counted as dropped), and backs off, doubling and jittered, at the first retryable
failure; the data stays on disk meanwhile.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Protocol

from otel_perf import _semconv
from otel_perf._safety import log_once, raise_internal_errors
from otel_perf.exporters._spool import Spool
from otel_perf.exporters._transport import Outcome, SendResult, Transport
from otel_perf.exporters.otlp import OTLPTarget, Signal

__all__ = ["Sender", "SenderOwner"]


class SenderOwner(Protocol):
    """What a sender reads of its exporter (``durable._DurableExporter``)."""

    signal: Signal
    spool: Spool
    target: OTLPTarget
    transport: Transport
    min_backoff: float
    max_backoff: float
    poll_interval: float
    lock_poll_interval: float

    def count_drop(self, signal: str, items: int, reason: str) -> None:
        """Count ``items`` dropped for ``reason`` in ``otel_perf.exporter.dropped``."""


class Sender:
    """The daemon thread that sends one signal's spool entries in order, with backoff.

    It runs a pass when due: new data (unless backing off), a flush request, the end of a backoff, or the
    idle poll (entries another process left). A pass takes the spool's replay lock, sends entries oldest
    first and deletes each once accepted; a retryable failure ends the pass and starts a backoff.
    """

    def __init__(self, exporter: SenderOwner) -> None:
        self._exporter = exporter
        self._cond = threading.Condition()
        self._due = 0.0  # run a pass at once: entries from an earlier run
        self._backoff = 0.0
        self._backoff_until = 0.0
        self._stopping = False
        self.sending = False
        self.failures = 0  # consecutive failed attempts (reset by a success)
        self.failed_attempts = 0  # all failed attempts, ever
        self._thread = threading.Thread(target=self._run, name=f"otel-perf-durable-{exporter.signal}",
                                        daemon=True)
        self._thread.start()

    # called from other threads
    def notify_data(self) -> None:
        with self._cond:
            due = max(time.monotonic(), self._backoff_until)
            if due < self._due:
                self._due = due
                self._cond.notify_all()

    def request_pass(self) -> None:
        """Run a pass now, even while backing off (a flush wants to know whether the backend is back)."""
        with self._cond:
            self._due = time.monotonic()
            self._cond.notify_all()

    def wait_progress(self, timeout: float) -> None:
        with self._cond:
            self._cond.wait(timeout)

    def stop(self, timeout: float) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(max(0.0, timeout))

    def is_alive(self) -> bool:
        """Whether the thread still runs (a send in flight outlived ``stop()``'s wait)."""
        return self._thread.is_alive()

    # the thread
    def _run(self) -> None:
        exporter = self._exporter
        try:
            exporter.spool.remove_stale_temporaries()
        except OSError:
            pass
        while True:
            with self._cond:
                while not self._stopping and time.monotonic() < self._due:
                    self._cond.wait(self._due - time.monotonic())
                if self._stopping:
                    return
                # New data or a flush during the pass lowers this again.
                self._due = float("inf")
            try:
                next_in = self._pass()
            except Exception as exc:  # never let the thread die: the spool keeps the data
                if raise_internal_errors():
                    raise  # under otel-perf's tests a fault surfaces (pytest reports thread exceptions)
                log_once(("durable-sender", exporter.signal, type(exc).__name__),
                         "otel-perf: durable %s export failed (%s: %s); retrying", exporter.signal,
                         type(exc).__name__, exc, exc_info=True)
                next_in = exporter.max_backoff
            with self._cond:
                self._due = min(self._due, time.monotonic() + next_in)
                self._cond.notify_all()

    def _pass(self) -> float:
        """Send what the spool holds. Returns the seconds until the next pass."""
        exporter = self._exporter
        spool = exporter.spool
        if not spool.has_entries():
            return exporter.poll_interval
        if not spool.try_lock():
            return exporter.lock_poll_interval  # another process is replaying this signal
        try:
            while True:
                names = spool.entries()
                if not names:
                    return exporter.poll_interval
                for name in names:
                    with self._cond:
                        if self._stopping:
                            return exporter.poll_interval
                    try:
                        entry = spool.claim(name)
                    except BlockingIOError:
                        return exporter.lock_poll_interval  # being evicted this instant
                    if entry is None:
                        continue  # gone, or corrupt and moved aside
                    self.sending = True
                    try:
                        result = exporter.transport.send(entry.payload)
                    except Exception:
                        entry.release()
                        raise
                    finally:
                        self.sending = False
                    if result.outcome is Outcome.RETRY:
                        entry.release()
                        return self._back_off(result)
                    if result.outcome is Outcome.REJECT:
                        exporter.count_drop(exporter.signal, entry.items,
                                             _semconv.EXPORTER_DROP_REASON_REJECTED)
                        log_once(("durable-rejected", exporter.signal),
                                 "otel-perf: the backend rejected a %s batch (%s); it is dropped, not "
                                 "retried. Further rejections are counted in %s, not logged.",
                                 exporter.signal, result.detail, "otel_perf.exporter.dropped")
                    entry.remove()
                    self._backoff = 0.0
                    self._backoff_until = 0.0
                    self.failures = 0
                    with self._cond:
                        self._cond.notify_all()
        finally:
            spool.unlock()

    def _back_off(self, result: SendResult) -> float:
        exporter = self._exporter
        self.failures += 1
        self.failed_attempts += 1
        if self.failures == 1:
            log_once(("durable-unreachable", exporter.signal),
                     "otel-perf: the %s backend %s does not accept data yet (%s); batches are kept in %s "
                     "and retried. Not logged again.", exporter.signal, exporter.target.endpoint,
                     result.detail, exporter.spool.directory)
        doubled = self._backoff * 2 if self._backoff else exporter.min_backoff
        self._backoff = min(exporter.max_backoff, doubled)
        delay = self._backoff * random.uniform(0.5, 1.0)
        if result.retry_after is not None:
            delay = min(exporter.max_backoff, max(delay, result.retry_after))
        self._backoff_until = time.monotonic() + delay
        return delay
