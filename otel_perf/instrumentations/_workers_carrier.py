"""What a process-pool job carries to its worker: the :data:`Info` tuple, and the submitter's context in it.

Why this module exists: the owner of a process pool and its workers must agree on one layout of what
travels with each job, and on how the submitter's context crosses the process boundary. Both sides read
them here: the owner builds :data:`Info` (``_workers_trampoline.job_info``) with :func:`carrier_of`, the
worker reads it back with :func:`context_from`.

:data:`Info` stays a plain tuple of primitives, read by the index names below: it is pickled with every
job, and a tuple pickles and unpickles in C, where a NamedTuple pickles a class reference and runs Python
code both ways (measured here on Python 3.11: 0.6 µs to pickle and 0.4 µs to unpickle the tuple, 8.8 µs
and 3.6 µs as a NamedTuple, against a no-op round trip of about 250 µs with a 1.10x budget).
"""

from __future__ import annotations

import os
from typing import Any, Final

from opentelemetry import baggage, propagate, trace
from opentelemetry import context as otel_context
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from otel_perf._context import get_current

__all__ = [
    "EXTRA_FLUSH",
    "EXTRA_KIND",
    "EXTRA_NAME",
    "EXTRA_SLOW",
    "EXTRA_SNAPSHOT",
    "EXTRA_SPANS",
    "INFO_CARRIER",
    "INFO_CHUNKED",
    "INFO_EXTRA",
    "INFO_OWNER",
    "INFO_POOL",
    "INFO_SUBMITTED",
    "Extra",
    "Info",
    "carrier_of",
    "context_from",
]

#: What a job needs beyond the context, when it needs anything: (pool name, pool kind, spans on,
#: snapshot, flush after each job, slow-span threshold in seconds or None). None when spans are off (also
#: not slow), there is no snapshot and no per-job flush.
#: The snapshot travels only for a pool whose workers started before otel-perf saw it
#: (``_workers_setup.set_up_workers``).
Extra = tuple[str, str, bool, "bytes | None", bool, "float | None"]
EXTRA_NAME: Final = 0
EXTRA_KIND: Final = 1
EXTRA_SPANS: Final = 2
EXTRA_SNAPSHOT: Final = 3
EXTRA_FLUSH: Final = 4
EXTRA_SLOW: Final = 5

#: What travels with each process job (a tuple of primitives: it pickles fast, in C):
#: (owner pid, pool id, submission time, context carrier, extra, may run as an item of a chunk). The
#: carrier is a W3C ``traceparent`` string, or a full propagator dict when the context also has trace
#: state or baggage, or None without a valid span.
Info = tuple[int, int, float, "str | dict[str, str] | None", "Extra | None", bool]
INFO_OWNER: Final = 0
INFO_POOL: Final = 1
INFO_SUBMITTED: Final = 2
INFO_CARRIER: Final = 3
INFO_EXTRA: Final = 4
INFO_CHUNKED: Final = 5

#: This process's pid, kept current across fork: a job compares it with its owner's (``INFO_OWNER``).
my_pid = os.getpid()


def _refresh_pid() -> None:
    global my_pid
    my_pid = os.getpid()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_refresh_pid)


# --- in the owner: the carrier of the submitter's context ---------------------------------------------

#: (the last context a job was submitted in, its carrier when that is a traceparent string or None).
#: Contexts are immutable, and a request submits its jobs from one context: the carrier is then worked
#: out once (about 0.9 µs) and found again by identity (0.1 µs). Holds at most that one context.
last_carrier: tuple[Any, str | None] = (None, None)


def carrier_of(ctx: otel_context.Context | None = None) -> str | dict[str, str] | None:
    """The carrier of ``ctx``, by default the current context (:data:`Info`); ``job_info`` looks in
    :data:`last_carrier` first."""
    global last_carrier
    if ctx is None:
        ctx = get_current()
    span_context = trace.get_current_span(ctx).get_span_context()
    if not span_context.is_valid:
        last_carrier = (ctx, None)
        return None
    if span_context.trace_state or baggage.get_all(ctx):
        headers: dict[str, str] = {}
        propagate.inject(headers, context=ctx)  # not cached: the global propagator may change
        return headers
    # Formatting traceparent ourselves costs a fraction of propagate.inject/extract (benchmark group
    # workers.process.roundtrip).
    header = f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-{span_context.trace_flags:02x}"
    last_carrier = (ctx, header)
    return header


# --- in the worker: the context a carrier stands for --------------------------------------------------

#: (the last traceparent carrier read, its context).
last_context: tuple[Any, Any] = (None, None)


def context_from(carrier: str | dict[str, str] | None) -> otel_context.Context | None:
    """The context a job's carrier stands for (the last one is kept in :data:`last_context`)."""
    global last_context
    if carrier is None:
        return None
    if isinstance(carrier, dict):
        return propagate.extract(carrier, context=otel_context.Context())
    last = last_context
    if last[0] == carrier:  # jobs of one request share it; contexts are immutable
        return last[1]  # type: ignore[no-any-return]
    _, trace_id, span_id, flags = carrier.split("-")
    parent = NonRecordingSpan(SpanContext(int(trace_id, 16), int(span_id, 16), is_remote=True,
                                          trace_flags=TraceFlags(int(flags, 16))))
    ctx = trace.set_span_in_context(parent, otel_context.Context())
    last_context = (carrier, ctx)
    return ctx
