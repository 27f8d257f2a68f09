"""The demo workload: the performance plan's program in miniature, an agent-like CLI.

It reads a script of commands, parses them (``shlex``, ``argparse``, JSON payloads), dispatches them as
jobs to a thread pool and a process pool; the jobs call tools (decorated functions, a tool named in
``OTEL_PERF_TOOLS``, external programs), read files through :class:`~otel_perf.BufferPool` and run an
asyncio section. Options set its duration, load and faults (slow jobs, failing tools, a memory spike) so
that it can exercise every objective and alert. ``otel-perf demo`` runs it under the launcher and ends
with the objectives report.
"""
