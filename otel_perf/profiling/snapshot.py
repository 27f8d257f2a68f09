"""What a sampler collected over one window, and its pprof encoding.

Why this module exists: a :class:`Snapshot` is the hand-over between the sampler (which aggregates stacks
while holding the GIL, :mod:`.sampler`) and the encoders that run later, in another thread: gzipped
pprof for the debug server (:func:`encode_pprof`) and OTLP profiles for continuous profiling
(:mod:`.otlp`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from otel_perf.profiling.pprof import ProfileBuilder
from otel_perf.profiling.spans import SpanLabels

__all__ = ["Labels", "Mode", "Snapshot", "encode_pprof"]

Mode = Literal["cpu", "wall"]
#: A sample's labels: thread name, task name, and the span's (trace id, span id, local root name)
Labels = tuple[str, str, SpanLabels]
#: (name, file name, first line): what identifies a function in the profile
_FunctionKey = tuple[str, str, int]


@dataclass(slots=True)
class Snapshot:
    """What a sampler collected over one window: the aggregated stacks and the locations they use.

    ``counts`` maps (labels, stack) to [samples, value]: labels are (thread name, task name, span labels),
    a stack is location ids outermost first, and ``locations[id - 1]`` is ((function name, file, first
    line), line) of location ``id``. The value is CPU nanoseconds (CPU mode) or wall nanoseconds.
    """

    mode: Mode
    period_ns: int
    start_unix_ns: int
    duration_ns: int
    locations: list[tuple[_FunctionKey, int]]
    counts: dict[tuple[Labels, tuple[int, ...]], list[int]]
    comments: list[str]

    @property
    def samples(self) -> int:
        return sum(count for count, _ in self.counts.values())



def encode_pprof(snapshot: Snapshot) -> bytes:
    """A :class:`Snapshot` as gzipped pprof: sample types ``samples``/``count`` and the mode's
    nanoseconds, labels ``thread``, ``task``, ``trace_id``, ``span_id`` and ``span_name``."""
    mode = snapshot.mode
    value_type = (mode, "nanoseconds")
    builder = ProfileBuilder([("samples", "count"), value_type], period_type=value_type,
                             period=snapshot.period_ns, default_sample_type=mode)
    for text in snapshot.comments:
        builder.comment(text)
    builder.time_nanos = snapshot.start_unix_ns
    builder.duration_nanos = snapshot.duration_ns
    # The builder numbers locations in the order they are first given: these ids are the snapshot's.
    ids = [0] + [builder.location(builder.function(*function), line) for function, line in snapshot.locations]
    for ((thread_name, task_name, (trace_id, span_id, span_name)), stack), (count, value) in \
            snapshot.counts.items():
        # Stacks are kept outermost first; pprof lists location ids innermost first.
        builder.sample([ids[location] for location in reversed(stack)], (count, value),
                       (("thread", thread_name), ("task", task_name), ("trace_id", trace_id),
                        ("span_id", span_id), ("span_name", span_name)))
    return builder.encode()
