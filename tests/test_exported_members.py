"""The public API: a small, sorted __all__ whose every name resolves."""

from __future__ import annotations

import otel_perf


def test_all_is_sorted_and_resolves() -> None:
    assert otel_perf.__all__ == sorted(otel_perf.__all__)
    for name in otel_perf.__all__:
        assert getattr(otel_perf, name) is not None, name


def test_private_names_are_not_exported() -> None:
    assert not [n for n in otel_perf.__all__ if n.startswith("_") and n != "__version__"]
