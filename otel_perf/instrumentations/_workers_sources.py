"""Which pool this is: its family (where its state is read from), its kind, its default name, and whether
it is OpenTelemetry's own.

Why this module exists: every pool is classified once, at its first use (``_workers_state.state_for``);
the answer decides how its state is read at collection and whether it is instrumented at all (the SDK's
and exporters' own pools are not: their spans and metrics would be noise and a recursion risk).
"""

from __future__ import annotations

import re
import sys
from typing import Any

from otel_perf._semconv import POOL_KIND_CUSTOM, POOL_KIND_PROCESS, POOL_KIND_THREAD

__all__ = ["SOURCE_CUSTOM", "SOURCE_LOKY", "SOURCE_MP", "SOURCE_MP_THREAD", "SOURCE_PPE", "SOURCE_TPE",
           "created_internally", "default_name", "source_of"]

#: Where a pool's state is read from (one reader per stdlib pool family).
SOURCE_TPE = "concurrent.futures.thread"
SOURCE_PPE = "concurrent.futures.process"
SOURCE_MP = "multiprocessing.pool"
SOURCE_MP_THREAD = "multiprocessing.pool.ThreadPool"
SOURCE_LOKY = "loky"  # loky's ProcessPoolExecutor (joblib's default backend): read like SOURCE_PPE
SOURCE_CUSTOM = "custom"

_GENERATED_PREFIX = re.compile(r"^ThreadPoolExecutor-\d+$")


def default_name(pool: Any, source: str) -> str:
    if source == SOURCE_TPE:
        prefix = getattr(pool, "_thread_name_prefix", "")
        if prefix and not _GENERATED_PREFIX.match(prefix):
            return str(prefix)
    if source == SOURCE_LOKY:
        return "loky"  # its classes (_ReusablePoolExecutor, joblib's MemmappingExecutor) are internal names
    return type(pool).__name__


def source_of(pool: Any) -> tuple[str, str]:
    from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

    if isinstance(pool, ThreadPoolExecutor):
        return POOL_KIND_THREAD, SOURCE_TPE
    if isinstance(pool, ProcessPoolExecutor):
        return POOL_KIND_PROCESS, SOURCE_PPE
    for module in _LOKY_MODULES:
        loky = sys.modules.get(module)
        if loky is not None and isinstance(pool, loky.ProcessPoolExecutor):
            return POOL_KIND_PROCESS, SOURCE_LOKY
    mp_pool = sys.modules.get("multiprocessing.pool")
    if mp_pool is not None and isinstance(pool, mp_pool.ThreadPool):
        return POOL_KIND_THREAD, SOURCE_MP_THREAD
    if mp_pool is not None and isinstance(pool, mp_pool.Pool):
        return POOL_KIND_PROCESS, SOURCE_MP
    return POOL_KIND_CUSTOM, SOURCE_CUSTOM


#: Modules whose frames only pass a pool call through: the pools' own code, wrappers (otel-perf's, wrapt,
#: contrib instrumentations such as opentelemetry-instrumentation-threading, which wraps ``submit`` too)
#: and asyncio's ``run_in_executor``. The first frame outside them is the code that uses the pool.
_PASS_THROUGH_MODULES = ("concurrent.futures", "multiprocessing", "functools", "asyncio", "wrapt",
                         "otel_perf.instrumentations.", "opentelemetry.instrumentation.")
#: The code whose pools are OpenTelemetry's own plumbing: the SDK (resource detection, concurrent span and
#: log processors) and exporters. Not ``opentelemetry.*`` as a whole (contrib instrumentations are
#: wrappers around the user's calls) nor ``otel_perf.*`` (the demo is a user program).
_INTERNAL_MODULES = ("opentelemetry.sdk.", "opentelemetry.exporter.", "otel_perf.exporters.")
_INTERNAL_PACKAGES = ("opentelemetry.sdk", "opentelemetry.exporter", "otel_perf.exporters")
_LOKY_MODULES = ("joblib.externals.loky.process_executor", "loky.process_executor")


def created_internally() -> bool:
    """Whether the pool used for the first time is OpenTelemetry's own: the code that uses it (the first
    frame outside the pools and the wrappers around them) is the SDK's or an exporter's.

    The SDK runs resource detectors and concurrent span processors on thread pools that it
    makes and uses itself; spans and metrics for those pools would be noise in the user's data (and a
    recursion risk), so they are left alone. A pool used by any other code, including a program shipped
    in otel-perf such as its demo, is the user's.
    """
    frame = sys._getframe(2)
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if not isinstance(module, str):
            return False
        if not module.startswith(_PASS_THROUGH_MODULES):
            return module.startswith(_INTERNAL_MODULES) or module in _INTERNAL_PACKAGES
        frame = frame.f_back  # type: ignore[assignment]
    return False
