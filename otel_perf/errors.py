"""Errors otel-perf raises to its callers.

Hierarchy::

    ValueError
    └── ConfigError      a configure() argument or instrumentor option is invalid

Everything else otel-perf does is guarded (``_safety``): an internal fault is logged once and
swallowed, never raised into the host program.
"""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A ``configure()`` argument (or an instrumentor option) is invalid.

    The message names the environment variable the argument overrides, the expected form and the value
    given, e.g. ``Expected OTEL_PERF_MEMORY_THRESHOLD to be a ratio between 0 and 1, got 'abc'``.
    """
