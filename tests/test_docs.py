"""The reference docs are generated from _config.py and _semconv.py and must not go stale."""

from __future__ import annotations

import runpy

from tests.conftest import ROOT

GENERATOR = runpy.run_path(str(ROOT / "scripts" / "generate-docs.py"))


def test_reference_pages_are_current() -> None:
    """Adding a setting or a metric without regenerating the docs fails here:
    run `python scripts/generate-docs.py`."""
    for path, build in GENERATOR["PAGES"].items():
        committed = (ROOT / path).read_text()
        assert committed == build(), f"{path} is stale: run python scripts/generate-docs.py"


def test_every_setting_and_metric_is_documented() -> None:
    from otel_perf import _config, _semconv

    configuration = (ROOT / "docs" / "configuration.md").read_text()
    telemetry = (ROOT / "docs" / "telemetry.md").read_text()
    assert all(f"`{s.env}`" in configuration for s in _config.SETTINGS)
    assert all(f"`{m.name}`" in telemetry for m in _semconv.METRICS)
