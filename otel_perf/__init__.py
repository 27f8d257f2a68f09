"""otel-perf: make a Python program's performance visible through OpenTelemetry.

Two ways in: launch the program with ``opentelemetry-instrument`` (or ``otel-perf run``), or call
:func:`configure` in it. The public API below is small; everything else is private (``_``) or lives in
the ``instrumentations``, ``exporters`` and ``profiling`` subpackages. Names are imported lazily so that
``import otel_perf`` stays cheap on the launcher's start-up path.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from otel_perf.errors import ConfigError
from otel_perf.version import __version__

if TYPE_CHECKING:
    from otel_perf._sdk import Handle, configure, shutdown
    from otel_perf.instrumentations.workers import job, name_pool, track_queue

# public name -> module that defines it
_LAZY = {
    "Handle": "otel_perf._sdk",
    "configure": "otel_perf._sdk",
    "shutdown": "otel_perf._sdk",
    "job": "otel_perf.instrumentations.workers",
    "name_pool": "otel_perf.instrumentations.workers",
    "track_queue": "otel_perf.instrumentations.workers",
}

__all__ = [
    "ConfigError",
    "Handle",
    "__version__",
    "configure",
    "job",
    "name_pool",
    "shutdown",
    "track_queue",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'otel_perf' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
