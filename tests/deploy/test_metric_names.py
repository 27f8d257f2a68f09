"""Every metric the rules and the dashboard use is one otel-perf emits, as Prometheus names it.

The names are not derived by hand: a program records every metric of the catalogue (``_semconv.METRICS``,
with its instrument kind, unit and attributes) through the real SDK, exposes them with
``PrometheusMetricReader`` (the ``prometheus`` extra) and ``prometheus_client``, and this test scrapes its
``/metrics`` text. The collector's variant differs only by ``_ratio`` on gauges of unit "1" (docs/deploy.md,
"Without a collector"), which is applied to the scraped names.
"""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request
from collections.abc import Iterator

import pytest
import yaml

from otel_perf import _semconv as sc
from otel_perf._objectives import DEFAULT_OBJECTIVES
from tests.conftest import PYTHON, ROOT, clean_env

DEPLOY = ROOT / "deploy"
RULES = DEPLOY / "prometheus" / "rules" / "otel-perf.rules.yml"
DASHBOARD_DIR = DEPLOY / "grafana" / "dashboards"

EMIT_ALL = r'''
import sys, time
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from prometheus_client import start_http_server
from otel_perf import _semconv as sc

server, _thread = start_http_server(0, addr="127.0.0.1")
provider = MeterProvider(resource=Resource.create({"service.name": "names"}),
                         metric_readers=[PrometheusMetricReader()])
meter = provider.get_meter(sc.INSTRUMENTATION_SCOPE)
for spec in sc.METRICS:
    attrs = {name: "x" for name in spec.attributes}
    if spec.instrument == "counter":
        meter.create_counter(spec.name, unit=spec.unit).add(1, attrs)
    elif spec.instrument == "updowncounter":
        meter.create_up_down_counter(spec.name, unit=spec.unit).add(1, attrs)
    elif spec.instrument == "histogram":
        meter.create_histogram(spec.name, unit=spec.unit).record(1, attrs)
    else:
        meter.create_gauge(spec.name, unit=spec.unit).set(1, attrs)
print(server.server_port, flush=True)
time.sleep(60)
'''

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "offset",
             "bool", "inf", "nan"}
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_MATCHERS = re.compile(r"\{([^}]*)\}")
_MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*"')


@pytest.fixture(scope="module")
def exposition(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The /metrics text of a real program that recorded every catalogue metric."""
    app = tmp_path_factory.mktemp("names") / "emit_all.py"
    app.write_text(EMIT_ALL)
    proc = subprocess.Popen([PYTHON, str(app)], env=clean_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            yield response.read().decode()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def _exposed(exposition: str) -> tuple[set[str], set[str]]:
    """Metric names (both variants) and label names of the exposition text."""
    names: set[str] = set()
    labels: set[str] = set()
    for line in exposition.splitlines():
        if not line or line.startswith("#"):
            continue
        match = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?", line)
        assert match
        names.add(match.group(1))
        labels.update(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', match.group(2) or ""))
    # The collector's prometheus exporter adds `_ratio` to gauges of unit "1".
    for spec in sc.METRICS:
        if spec.unit == "1" and spec.instrument == "gauge":
            direct = spec.name.replace(".", "_")
            assert direct in names, f"{spec.name} not exposed as {direct}"
            names.add(direct + "_ratio")
    return names, labels


def _names_and_labels(expr: str) -> tuple[set[str], set[str]]:
    """Metric names and matcher label names referenced by a PromQL expression."""
    expr = re.sub(r"\$\{?\w+\}?", "x", expr)  # Grafana variables
    labels = {name for block in _MATCHERS.findall(expr) for name in _MATCHER.findall(block)}
    expr = _MATCHERS.sub("", expr)
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    expr = _GROUPING.sub("", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", expr):
        word, call = match.group(1), match.group(2)
        if call or word.lower() in _KEYWORDS:
            continue
        names.add(word)
    return names, labels


def _rule_exprs() -> Iterator[tuple[str, str]]:
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            yield rule.get("alert") or rule["record"], rule["expr"]


def _dashboard_exprs() -> Iterator[tuple[str, str]]:
    files = sorted(DASHBOARD_DIR.glob("*.json"))
    assert files, "no dashboard"
    for file in files:
        dashboard = json.loads(file.read_text())
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                if "expr" in target:
                    yield f"{file.name}: {panel['title']}", target["expr"]
        for variable in dashboard.get("templating", {}).get("list", []):
            if variable.get("type") == "query":
                query = variable["query"]
                text = query["query"] if isinstance(query, dict) else query
                yield f"{file.name}: ${variable['name']}", text


def _check(exprs: Iterator[tuple[str, str]], names: set[str], labels: set[str]) -> set[str]:
    recorded = {rule["record"] for group in yaml.safe_load(RULES.read_text())["groups"]
                for rule in group["rules"] if "record" in rule}
    used: set[str] = set()
    problems = []
    for where, expr in exprs:
        if expr.startswith("label_values("):  # Grafana's label_values(selector, label)
            expr = expr[len("label_values("):].rsplit(",", 1)[0]
        found, matcher_labels = _names_and_labels(expr)
        for name in found:
            if ":" in name:
                if name not in recorded:
                    problems.append(f"{where}: {name} is no recording rule")
            elif name not in names:
                problems.append(f"{where}: {name} is not a metric otel-perf emits")
        for label in matcher_labels - labels - {"job", "instance", "le"}:
            problems.append(f"{where}: label {label} is not on any emitted series")
        used |= found
    assert not problems, "\n".join(problems)
    return used


@pytest.mark.e2e
def test_every_metric_in_the_rules_is_emitted(exposition: str) -> None:
    """Rules reference only names that come out of the real exporter (or its collector variant), and only
    labels those series carry; recorded names are defined in the same file."""
    names, labels = _exposed(exposition)
    used = _check(_rule_exprs(), names, labels)
    # Each objective's metrics are used by the rules (no objective silently left out).
    for objective in DEFAULT_OBJECTIVES:
        for metric in objective.metrics:
            stem = metric.replace(".", "_")
            assert any(name.startswith(stem) for name in used), f"{metric} is not used by any rule"


@pytest.mark.e2e
def test_every_metric_in_the_dashboard_is_emitted(exposition: str) -> None:
    """Dashboard panels and variables reference only emitted or recorded names."""
    names, labels = _exposed(exposition)
    used = _check(_dashboard_exprs(), names, labels)
    for objective in DEFAULT_OBJECTIVES:
        assert objective.record in used, f"no dashboard panel shows {objective.record}"


def test_expression_parser_finds_names_and_skips_functions_labels_and_keywords() -> None:
    """The PromQL scan used above: it must not miss a name (else the tests above could not fail)."""
    names, labels = _names_and_labels(
        'histogram_quantile(0.95, sum by (job, le) (rate(a_bucket{x="1", y=~"a|b"}[5m]))) '
        '> 1.5 * (job:b:p95 offset 1d) and on(job) c unless label_replace(d, "s", "t", "job", ".*") '
        'or max_over_time(e{job="$job"}[$__range])'
    )
    assert names == {"a_bucket", "job:b:p95", "c", "d", "e"}
    assert labels == {"x", "y", "job"}


def test_an_unknown_name_is_reported() -> None:
    """A panel on a name that does not exist fails the check."""
    with pytest.raises(AssertionError, match="otel_perf_pool_job_duration_bucket is not a metric"):
        _check(iter([("panel", "rate(otel_perf_pool_job_duration_bucket[5m])")]),
               {"otel_perf_pool_job_duration_seconds_bucket"}, set())


def test_exposition_helper_adds_the_collector_ratio_variant() -> None:
    """The `_ratio` names are derived from unit-1 gauges only."""
    text = "\n".join(f"{spec.name.replace('.', '_')} 1" for spec in sc.METRICS if spec.unit == "1")
    names, _ = _exposed(text)
    assert "otel_perf_memory_pressure_ratio" in names
    assert "process_cpu_utilization_ratio" in names
    assert not any(name.endswith("_total_ratio") for name in names)

