"""Every metric, span and attribute name otel-perf emits, in one place.

Why this module exists: names are the contract with dashboards, alert rules and users' queries
(listed in ``docs/telemetry.md``). Instrumentations import them from here and never spell a name inline, so a
rename is one edit and the reference docs (generated from this module) cannot drift.

Semantic-convention names are used where a convention exists; GenAI names are defined locally because
the Python semconv package marks them as moved to semantic-conventions-genai. Everything of our own
lives under ``otel_perf.``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

INSTRUMENTATION_SCOPE: Final = "otel_perf"
SCHEMA_URL: Final = "https://opentelemetry.io/schemas/1.44.0"

# --- attributes ------------------------------------------------------------------------------------
ERROR_TYPE: Final = "error.type"
CODE_FUNCTION_NAME: Final = "code.function.name"
CPU_MODE: Final = "cpu.mode"
PROCESS_PID: Final = "process.pid"
PROCESS_EXECUTABLE_NAME: Final = "process.executable.name"
PROCESS_EXIT_CODE: Final = "process.exit.code"
PROCESS_COMMAND_ARGS: Final = "process.command_args"
PROCESS_CONTEXT_SWITCH_TYPE: Final = "process.context_switch.type"
CPYTHON_GC_GENERATION: Final = "cpython.gc.generation"
THREAD_NAME: Final = "thread.name"
PROFILE_FRAME_TYPE: Final = "profile.frame.type"

POOL_NAME: Final = "otel_perf.pool.name"
POOL_KIND: Final = "otel_perf.pool.kind"
JOB_OUTCOME: Final = "otel_perf.job.outcome"
JOB_WAIT_DURATION: Final = "otel_perf.job.wait.duration"
PARSER_NAME: Final = "otel_perf.parser.name"
MEMORY_LIMIT_SOURCE: Final = "otel_perf.memory.limit.source"
MEMORY_PRESSURE_STATE: Final = "otel_perf.memory.pressure.state"
PROCESS_MAX_RSS: Final = "otel_perf.process.max_rss"
PROCESS_CPU_USER: Final = "otel_perf.process.cpu.user"
PROCESS_CPU_SYSTEM: Final = "otel_perf.process.cpu.system"
EXPORTER_SIGNAL: Final = "otel_perf.exporter.signal"
EXPORTER_DROP_REASON: Final = "otel_perf.exporter.drop.reason"

GEN_AI_OPERATION_NAME: Final = "gen_ai.operation.name"
GEN_AI_TOOL_NAME: Final = "gen_ai.tool.name"
GEN_AI_TOOL_TYPE: Final = "gen_ai.tool.type"
GEN_AI_TOOL_CALL_ID: Final = "gen_ai.tool.call.id"
GEN_AI_TOOL_DESCRIPTION: Final = "gen_ai.tool.description"
GEN_AI_TOOL_CALL_ARGUMENTS: Final = "gen_ai.tool.call.arguments"
GEN_AI_TOOL_CALL_RESULT: Final = "gen_ai.tool.call.result"
GEN_AI_OPERATION_EXECUTE_TOOL: Final = "execute_tool"

# Attribute values
POOL_KIND_THREAD: Final = "thread"
POOL_KIND_PROCESS: Final = "process"
POOL_KIND_CUSTOM: Final = "custom"
OUTCOME_OK: Final = "ok"
OUTCOME_ERROR: Final = "error"
OUTCOME_CANCELLED: Final = "cancelled"
LIMIT_SOURCE_CONFIG: Final = "config"
LIMIT_SOURCE_CGROUP: Final = "cgroup"
LIMIT_SOURCE_SYSTEM: Final = "system"
PRESSURE_HIGH: Final = "high"
PRESSURE_RECOVERED: Final = "recovered"
PROFILE_FRAME_TYPE_CPYTHON: Final = "cpython"

# --- histogram boundaries --------------------------------------------------------------------------
# Every histogram in seconds has each objective's threshold on a boundary (0.01, 0.5, 1.0 among them).
DURATION_BOUNDARIES: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)
# gen_ai.execute_tool.duration: the GenAI convention's doubling series, with 1.0 added so that the
# "tool execution p99 < 1 s" objective sits on a boundary.
TOOL_DURATION_BOUNDARIES: Final = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.5, 0.64, 1.0, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
)
GC_PAUSE_BOUNDARIES: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)
SIZE_BOUNDARIES: Final = (
    64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864,
)

InstrumentKind = Literal[
    "counter", "updowncounter", "histogram", "gauge",
]


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One metric of the catalogue: what the docs, the dashboards and the tests agree on."""

    name: str
    instrument: InstrumentKind
    unit: str
    description: str
    attributes: tuple[str, ...] = ()
    group: str = ""


def _m(
    group: str, name: str, instrument: InstrumentKind, unit: str, description: str, *attributes: str
) -> MetricSpec:
    return MetricSpec(name, instrument, unit, description, attributes, group)


_POOL_ATTRS = (POOL_NAME, POOL_KIND)

METRICS: Final[tuple[MetricSpec, ...]] = (
    # Runtime (otel_perf_runtime)
    _m("runtime", "process.cpu.time", "counter", "s", "CPU seconds used by the process.", CPU_MODE),
    _m("runtime", "process.cpu.utilization", "gauge", "1",
       "CPU used since the previous collection, over the CPUs the process may use.", CPU_MODE),
    _m("runtime", "process.memory.usage", "updowncounter", "By", "Resident set size of the process."),
    _m("runtime", "process.memory.virtual", "updowncounter", "By", "Virtual memory size of the process."),
    _m("runtime", "process.thread.count", "updowncounter", "{thread}", "OS threads of the process."),
    _m("runtime", "process.unix.file_descriptor.count", "updowncounter", "{file_descriptor}",
       "Open file descriptors of the process."),
    _m("runtime", "process.context_switches", "counter", "{context_switch}",
       "Context switches of the process.", PROCESS_CONTEXT_SWITCH_TYPE),
    _m("runtime", "process.uptime", "gauge", "s", "Seconds since the process started."),
    _m("runtime", "cpython.gc.collections", "counter", "{collection}",
       "Garbage collections per generation.", CPYTHON_GC_GENERATION),
    _m("runtime", "cpython.gc.collected_objects", "counter", "{object}",
       "Objects collected per generation.", CPYTHON_GC_GENERATION),
    _m("runtime", "cpython.gc.uncollectable_objects", "counter", "{object}",
       "Uncollectable objects found per generation.", CPYTHON_GC_GENERATION),
    _m("runtime", "otel_perf.gc.pause.duration", "histogram", "s",
       "Duration of each garbage-collection pause.", CPYTHON_GC_GENERATION),
    _m("runtime", "otel_perf.gc.pause.max", "gauge", "s",
       "Longest garbage-collection pause since the previous collection.", CPYTHON_GC_GENERATION),
    _m("runtime", "otel_perf.memory.peak", "gauge", "By", "Peak resident set size of the process."),
    _m("runtime", "otel_perf.thread.peak", "gauge", "{thread}",
       "High-water mark of Python threads alive at once."),
    _m("runtime", "otel_perf.heap.allocated", "updowncounter", "By",
       "Bytes allocated from the C heap (glibc mallinfo2)."),
    _m("runtime", "otel_perf.heap.reserved", "updowncounter", "By",
       "Bytes the C heap holds from the OS (glibc mallinfo2)."),
    _m("runtime", "otel_perf.python.allocated_blocks", "updowncounter", "{block}",
       "Memory blocks allocated by the Python allocator."),
    _m("runtime", "otel_perf.asyncio.task.count", "updowncounter", "{task}",
       "Unfinished asyncio tasks across running event loops."),
    _m("runtime", "otel_perf.eventloop.lag", "histogram", "s",
       "How late the event-loop probe ran compared with when it was scheduled."),
    # Memory pressure (otel_perf_memory)
    _m("memory", "otel_perf.memory.limit", "updowncounter", "By", "The memory limit that applies.",
       MEMORY_LIMIT_SOURCE),
    _m("memory", "otel_perf.memory.usage", "updowncounter", "By", "Memory counted against the limit."),
    _m("memory", "otel_perf.memory.pressure", "gauge", "1", "Usage divided by limit."),
    _m("memory", "otel_perf.memory.pressure.events", "counter", "{event}",
       "Crossings of the pressure threshold.", MEMORY_PRESSURE_STATE),
    _m("memory", "otel_perf.memory.cleanup.freed", "counter", "By", "Bytes freed by cleanup."),
    _m("memory", "otel_perf.memory.psi", "gauge", "1", "Memory pressure stall information, some avg10 / 100."),
    _m("memory", "otel_perf.process_tree.memory.usage", "updowncounter", "By",
       "Resident set size of this process and all its descendants."),
    _m("memory", "otel_perf.process_tree.memory.peak", "gauge", "By",
       "High-water mark of the process tree's resident set size."),
    # Worker pools (otel_perf_workers)
    _m("workers", "otel_perf.pool.queue.depth", "updowncounter", "{job}",
       "Jobs waiting for a worker, read from the pool at collection (0 once a shut-down pool's workers ended).",
       *_POOL_ATTRS),
    _m("workers", "otel_perf.pool.worker.busy", "updowncounter", "{worker}",
       "Workers running a job, read from the pool at collection.", *_POOL_ATTRS),
    _m("workers", "otel_perf.pool.worker.limit", "updowncounter", "{worker}", "Most workers the pool may run.",
       *_POOL_ATTRS),
    _m("workers", "otel_perf.pool.job.wait.duration", "histogram", "s",
       "Time from submission until a worker started the job; one per finished job.", *_POOL_ATTRS),
    _m("workers", "otel_perf.pool.job.duration", "histogram", "s",
       "Time a worker spent running the job; one per job (a call of the function) that finished or was "
       "cancelled.", *_POOL_ATTRS, JOB_OUTCOME, ERROR_TYPE),
    _m("workers", "otel_perf.pool.job.rejected", "counter", "{job}",
       "Jobs the pool refused (shut down or broken).", *_POOL_ATTRS),
    _m("workers", "otel_perf.pool.job.retries", "counter", "{retry}", "Jobs run again after a failure.",
       *_POOL_ATTRS),
    _m("workers", "otel_perf.pool.worker.memory.max", "gauge", "By",
       "Largest resident set size among the pool's live worker processes.", *_POOL_ATTRS),
    # Tools and programs (otel_perf_tools, otel_perf_subprocess)
    _m("tools", "gen_ai.execute_tool.duration", "histogram", "s", "Duration of tool executions.",
       GEN_AI_TOOL_NAME, GEN_AI_TOOL_TYPE, ERROR_TYPE),
    _m("tools", "otel_perf.subprocess.duration", "histogram", "s",
       "Time from launching a program until it was reaped.", PROCESS_EXECUTABLE_NAME, ERROR_TYPE),
    # Parsers (otel_perf_parsers)
    _m("parsers", "otel_perf.parse.duration", "histogram", "s", "Duration of parse operations.",
       PARSER_NAME, ERROR_TYPE),
    _m("parsers", "otel_perf.parse.size", "histogram", "By", "Size of the parsed input.", PARSER_NAME),
    # Exporters
    _m("exporters", "otel_perf.exporter.dropped", "counter", "{item}",
       "Telemetry items lost on the way out: dropped by durable export, or by the SDK's batch processor "
       "on a full queue.", EXPORTER_SIGNAL, EXPORTER_DROP_REASON),
)

METRICS_BY_NAME: Final = {spec.name: spec for spec in METRICS}

#: What ``error.type`` holds, for the generated telemetry reference (scripts/generate-docs.py).
ERROR_TYPE_NOTE: Final = (
    "`error.type` has one spelling on every span and metric: for an exception, its class's fully qualified "
    "name (`json.decoder.JSONDecodeError`, `myapp.errors.ToolError`), builtins bare (`ValueError`), as the "
    "semantic conventions ask; for a program, its exit code or the signal that ended it (`3`, `SIGKILL`).")

#: A paragraph the generated telemetry reference adds under a group's metrics table.
GROUP_NOTES: Final[dict[str, str]] = {
    "workers": (
        "A job is one call of the function given to the pool: each item of `map`/`imap`/`starmap` (also in "
        "chunks) and each task of a `joblib.Parallel` batch. The job histograms count every job that "
        "finished (or was cancelled before it ran), in the process that owns the pool: a thread pool's job "
        "when it ends, a process pool's when its result reaches the owner. A pool gone before the next "
        "collection (made in a function, one per request, asyncio's default executor) is still published "
        "once after its last job, then forgotten; pools alive at exit are published by the final export. "
        "Queue depth, busy workers, the worker limit and worker memory are read from each live pool at "
        "collection. Covered: `concurrent.futures` executors, `multiprocessing.pool.Pool` and `ThreadPool`, "
        "loky's executor (joblib's default backend, named `loky`) and joblib's other backends, and "
        "`otel_perf.job(...)`. Submissions made while instrumentation is suppressed are not counted, and "
        "pools that only the OpenTelemetry SDK and exporters use are left out."),
    "exporters": (
        "`otel_perf.exporter.drop.reason`: `spool_full`, `rejected` and `spool_error` are durable export's "
        "(docs/durable-export.md); `queue_full` counts the spans (signal `traces`) and log records (`logs`) the "
        "SDK's batch processor dropped because its queue was full: they never reached the exporter, while "
        "otel-perf's metrics stay complete. A non-zero `queue_full` means the program ends spans faster than "
        "they are exported: raise `OTEL_BSP_MAX_QUEUE_SIZE` (default 2048; `OTEL_BLRP_MAX_QUEUE_SIZE` for "
        "logs) for bursts, and for busy pools make fewer spans with `OTEL_PERF_POOL_SPANS=slow` "
        "(docs/troubleshooting.md, \"Spans are missing\"). Counted for the SDK batch processors of the "
        "providers `configure()` or the launcher set up or found set, the user's own included, from start-up "
        "on; the SDK checks its queue and inserts without a lock, so under a sustained overflow the count "
        "can run up to about 1 % above the spans actually lost (a span counted as it found the queue full "
        "gets in when the export thread takes a batch out at that instant)."),
}


def metric(name: str) -> MetricSpec:
    """Return the catalogue entry for ``name`` (KeyError for a name not in the catalogue)."""
    return METRICS_BY_NAME[name]


@dataclass(frozen=True, slots=True)
class SpanSpec:
    """One span of the catalogue."""

    name: str
    kind: Literal["INTERNAL", "CLIENT"]
    description: str
    attributes: tuple[str, ...]
    group: str


SPANS: Final[tuple[SpanSpec, ...]] = (
    SpanSpec("{otel_perf.pool.name} {function name}", "INTERNAL",
             "One pool job, child of its submitter (a joblib task: of the span that called Parallel).",
             (POOL_NAME, POOL_KIND, CODE_FUNCTION_NAME, JOB_WAIT_DURATION, ERROR_TYPE, PROCESS_PID),
             "workers"),
    SpanSpec("execute_tool {gen_ai.tool.name}", "INTERNAL", "One tool call (GenAI semantic conventions).",
             (GEN_AI_OPERATION_NAME, GEN_AI_TOOL_NAME, GEN_AI_TOOL_TYPE, GEN_AI_TOOL_CALL_ID,
              GEN_AI_TOOL_DESCRIPTION, ERROR_TYPE, GEN_AI_TOOL_CALL_ARGUMENTS, GEN_AI_TOOL_CALL_RESULT),
             "tools"),
    SpanSpec("{process.executable.name}", "CLIENT", "One program run through subprocess.",
             (PROCESS_EXECUTABLE_NAME, PROCESS_PID, PROCESS_EXIT_CODE, ERROR_TYPE, PROCESS_MAX_RSS,
              PROCESS_CPU_USER, PROCESS_CPU_SYSTEM, PROCESS_COMMAND_ARGS),
             "tools"),
    SpanSpec("parse {otel_perf.parser.name}", "INTERNAL", "A parse slower or larger than the thresholds.",
             (PARSER_NAME, ERROR_TYPE), "parsers"),
)

# --- added by memory (BufferPool) ---------------------------------------------------------------------
BUFFER_POOL_HITS: Final = "otel_perf.buffer_pool.hits"
BUFFER_POOL_MISSES: Final = "otel_perf.buffer_pool.misses"
BUFFER_POOL_IN_USE: Final = "otel_perf.buffer_pool.in_use"

_BUFFER_POOL_METRICS: Final[tuple[MetricSpec, ...]] = (
    _m("memory", BUFFER_POOL_HITS, "counter", "{buffer}",
       "Buffers handed out from a BufferPool's free list (no allocation)."),
    _m("memory", BUFFER_POOL_MISSES, "counter", "{buffer}",
       "Buffers a BufferPool had to allocate because its free list was empty."),
    _m("memory", BUFFER_POOL_IN_USE, "updowncounter", "{buffer}", "Buffers checked out of BufferPools now."),
)
METRICS = METRICS + _BUFFER_POOL_METRICS  # type: ignore[misc]  # Final re-bound once, here

# --- added by durable export ---
#: Values of EXPORTER_DROP_REASON.
EXPORTER_DROP_REASON_SPOOL_FULL: Final = "spool_full"
EXPORTER_DROP_REASON_REJECTED: Final = "rejected"
EXPORTER_DROP_REASON_SPOOL_ERROR: Final = "spool_error"
#: The SDK's batch span or log record processor found its queue full (exporters/_batch_drops.py).
EXPORTER_DROP_REASON_QUEUE_FULL: Final = "queue_full"
EXPORTER_SPOOL_CORRUPT: Final = "otel_perf.exporter.spool.corrupt"

_DURABLE_METRICS: tuple[MetricSpec, ...] = (
    _m("exporters", EXPORTER_SPOOL_CORRUPT, "counter", "{entry}",
       "Spool entries that failed their checks and were moved aside to corrupt/.", EXPORTER_SIGNAL),
)
METRICS = METRICS + _DURABLE_METRICS  # type: ignore[misc]
METRICS_BY_NAME = {spec.name: spec for spec in METRICS}  # type: ignore[misc]

# --- added by parsers ---
PARSE_DURATION: Final = "otel_perf.parse.duration"
PARSE_SIZE: Final = "otel_perf.parse.size"
# The span of a slow or large parse: PARSE_SPAN_NAME.format(parser name), e.g. "parse json".
PARSE_SPAN_NAME: Final = "parse {}"
# Size of the parsed input on that span (By; same measure as otel_perf.parse.size), so a reader of the
# span sees whether it exists because the parse was slow or because its input was large.
PARSE_INPUT_SIZE: Final = "otel_perf.parse.input.size"

SPANS = tuple(  # type: ignore[misc]  # Final rebound once, here, to add the attribute above
    SpanSpec(s.name, s.kind, s.description, (*s.attributes, PARSE_INPUT_SIZE), s.group)
    if s.group == "parsers" and PARSE_INPUT_SIZE not in s.attributes else s
    for s in SPANS
)

# --- added by workers ---
POOL_QUEUE_DEPTH: Final = "otel_perf.pool.queue.depth"
POOL_WORKER_BUSY: Final = "otel_perf.pool.worker.busy"
POOL_WORKER_LIMIT: Final = "otel_perf.pool.worker.limit"
POOL_JOB_WAIT_DURATION: Final = "otel_perf.pool.job.wait.duration"
POOL_JOB_DURATION: Final = "otel_perf.pool.job.duration"
POOL_JOB_REJECTED: Final = "otel_perf.pool.job.rejected"
POOL_JOB_RETRIES: Final = "otel_perf.pool.job.retries"
POOL_WORKER_MEMORY_MAX: Final = "otel_perf.pool.worker.memory.max"
