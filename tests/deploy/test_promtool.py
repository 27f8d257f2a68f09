"""The shipped Prometheus and Alertmanager files pass the real tools' checks and the rules' unit tests.

Uses Debian's ``prometheus`` (``promtool``) and ``prometheus-alertmanager`` (``amtool``); skipped, naming the
package, when missing (failing under CI).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT, require_binary

DEPLOY = ROOT / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
RULES = PROMETHEUS / "rules" / "otel-perf.rules.yml"
RULE_TESTS = PROMETHEUS / "rules" / "otel-perf.rules.test.yml"


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=120, cwd=cwd)


def test_promtool_check_config_accepts_prometheus_yml() -> None:
    """prometheus.yml (and the rule file it loads) is valid for Prometheus."""
    promtool = require_binary("promtool", "prometheus")
    done = _run(promtool, "check", "config", str(PROMETHEUS / "prometheus.yml"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 rule files found" in done.stdout


def test_promtool_check_rules_accepts_the_rules() -> None:
    """Every recording and alerting rule parses."""
    promtool = require_binary("promtool", "prometheus")
    done = _run(promtool, "check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"SUCCESS: \d+ rules found", done.stdout)


def test_promtool_rule_unit_tests_pass() -> None:
    """The unit tests (every alert firing and not firing, both naming variants) pass."""
    promtool = require_binary("promtool", "prometheus")
    done = _run(promtool, "test", "rules", str(RULE_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_promtool_rule_unit_tests_fail_when_a_threshold_changes(tmp_path: Path) -> None:
    """The unit tests are sensitive: a command objective of 1 s instead of 0.5 s makes them fail."""
    promtool = require_binary("promtool", "prometheus")
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    rules = RULES.read_text()
    changed = rules.replace("job:otel_perf_pool_job_duration_seconds:p95_5m > 0.5",
                            "job:otel_perf_pool_job_duration_seconds:p95_5m > 1")
    assert changed != rules
    (tmp_path / RULES.name).write_text(changed)
    done = _run(promtool, "test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert done.returncode == 1
    assert "OtelPerfCommandLatencyObjectiveMissed" in done.stdout + done.stderr


def test_amtool_check_config_accepts_alertmanager_yml() -> None:
    """alertmanager.yml is valid for Alertmanager."""
    amtool = require_binary("amtool", "prometheus-alertmanager")
    done = _run(amtool, "check-config", str(DEPLOY / "alertmanager" / "alertmanager.yml"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


@pytest.mark.parametrize("route", ["OtelPerfCommandLatencyObjectiveMissed",
                                   "OtelPerfSystemMemoryObjectiveMissed"])
def test_amtool_routes_otel_perf_alerts_to_the_webhook_receiver(route: str) -> None:
    """Warnings and criticals both reach the otel-perf receiver."""
    amtool = require_binary("amtool", "prometheus-alertmanager")
    severity = "critical" if "System" in route else "warning"
    done = _run(amtool, "config", "routes", "test",
                f"--config.file={DEPLOY / 'alertmanager' / 'alertmanager.yml'}",
                f"alertname={route}", f"severity={severity}", "job=demo")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "otel-perf"
