"""Static checks of what cannot run here (no Docker engine, collector, Jaeger or Grafana on this machine):
the files parse and have the structure their consumers need, and they agree with the objectives table."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from otel_perf._objectives import DEFAULT_OBJECTIVES
from tests.conftest import ROOT

DEPLOY = ROOT / "deploy"
RULES = DEPLOY / "prometheus" / "rules" / "otel-perf.rules.yml"
RULE_TESTS = DEPLOY / "prometheus" / "rules" / "otel-perf.rules.test.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "otel-perf.json"
README = DEPLOY / "README.md"


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _alerts() -> list[dict[str, Any]]:
    return [r for g in _yaml(RULES)["groups"] for r in g["rules"] if "alert" in r]


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to dashes."""
    anchors = set()
    for heading in re.findall(r"(?m)^#+\s+(.+?)\s*$", markdown):
        anchors.add(re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-"))
    return anchors


# --- rules -----------------------------------------------------------------------------------------------

def test_each_objective_has_a_recording_rule_and_an_alert_on_its_default_threshold() -> None:
    """The rules use the same thresholds as `otel-perf report` (otel_perf._objectives)."""
    records = {r["record"] for g in _yaml(RULES)["groups"] for r in g["rules"] if "record" in r}
    alerts = {a["alert"]: a for a in _alerts()}
    for objective in DEFAULT_OBJECTIVES:
        assert objective.record in records
        alert = alerts[objective.alert]
        threshold = objective.threshold
        written = str(int(threshold)) if float(threshold).is_integer() else repr(float(threshold))
        assert alert["expr"].strip() == f"{objective.record} > {written}"
        assert alert["labels"]["objective"] == objective.key


def test_the_plans_alerts_exist() -> None:
    """Memory pressure, latency degradation against a day earlier, error-rate increases (jobs, tools)."""
    alerts = {a["alert"]: a for a in _alerts()}
    assert "otel_perf:memory_pressure) > 0.8" in alerts["OtelPerfMemoryPressureHigh"]["expr"]
    assert "OtelPerfMemoryPressureEvents" in alerts
    for name in ("OtelPerfCommandLatencyDegraded", "OtelPerfToolLatencyDegraded"):
        assert "offset 1d" in alerts[name]["expr"]
    for name in ("OtelPerfJobErrorRateIncrease", "OtelPerfToolErrorRateIncrease"):
        assert "offset 1d" in alerts[name]["expr"]


def test_every_alert_has_summary_description_and_a_runbook_in_the_readme() -> None:
    """Each runbook_url points at a section of deploy/README.md that exists."""
    anchors = _anchors(README.read_text())
    for alert in _alerts():
        annotations = alert["annotations"]
        assert annotations["summary"] and annotations["description"], alert["alert"]
        url = annotations["runbook_url"]
        assert url.startswith("deploy/README.md#"), url
        assert url.split("#", 1)[1] in anchors, f"{alert['alert']}: no section {url} in deploy/README.md"
        assert alert["labels"]["severity"] in {"info", "warning", "critical"}


def test_every_alert_is_unit_tested_firing_and_not_firing() -> None:
    """The promtool test file has, for every alert, a case expecting it and a case expecting silence."""
    cases = [case for test in _yaml(RULE_TESTS)["tests"] for case in test.get("alert_rule_test", [])]
    for alert in _alerts():
        name = alert["alert"]
        mine = [c for c in cases if c["alertname"] == name]
        assert any(c.get("exp_alerts") for c in mine), f"{name} is never tested firing"
        assert any(not c.get("exp_alerts") for c in mine), f"{name} is never tested not firing"


def test_rule_tests_cover_both_naming_variants() -> None:
    """The collector variant (`_ratio`, otel_scope_name, uuid instance) is in the checked-in series."""
    text = RULE_TESTS.read_text()
    assert "process_cpu_utilization_ratio{" in text and "process_cpu_utilization{" in text
    assert "otel_perf_memory_pressure_ratio{" in text and "otel_perf_memory_pressure{" in text
    assert 'otel_scope_name="otel_perf"' in text


# --- compose ---------------------------------------------------------------------------------------------

def test_compose_starts_the_stack_with_pinned_images_and_only_uis_on_loopback() -> None:
    compose = _yaml(DEPLOY / "compose.yaml")
    services = compose["services"]
    assert {"otel-collector", "jaeger", "prometheus", "alertmanager", "grafana", "demo"} <= set(services)
    published = {}
    for name, service in services.items():
        if "image" in service:
            image = service["image"]
            assert re.search(r":v?\d+\.\d+(\.\d+)?(-[a-z]+)?$", image), f"{name}: image {image} is not pinned"
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port} is not loopback-only"
            published[name] = int(str(port).rsplit(":", 1)[1])
    assert published == {"jaeger": 16686, "prometheus": 9090, "alertmanager": 9093, "grafana": 3000}
    assert services["jaeger"]["image"].startswith("jaegertracing/jaeger:2.")
    assert "contrib" in services["otel-collector"]["image"]


def test_compose_demo_runs_under_the_launcher_sending_to_the_collector() -> None:
    demo = _yaml(DEPLOY / "compose.yaml")["services"]["demo"]
    assert demo["command"][0] == "opentelemetry-instrument"
    env = demo["environment"]
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4317"
    assert env["OTEL_PYTHON_DISTRO"] == "otel_perf" and "OTEL_PYTHON_CONFIGURATOR" not in env


def test_compose_mounts_exist() -> None:
    """Every file or directory compose mounts from deploy/ is in the repository."""
    for service in _yaml(DEPLOY / "compose.yaml")["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), source


# --- collector -------------------------------------------------------------------------------------------

def _check_pipelines(config: dict[str, Any]) -> None:
    service = config["service"]
    for name, pipeline in service["pipelines"].items():
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline.get(kind, []):
                assert component in config[kind], f"{name}: {component} is not defined under {kind}"
        processors = pipeline["processors"]
        assert processors[0] == "memory_limiter", f"{name}: memory_limiter must come first"
        assert processors[-1] == "batch", f"{name}: batch must come last"
    for extension in service.get("extensions", []):
        assert extension in config["extensions"]


def test_collector_config_otlp_in_traces_to_jaeger_metrics_to_prometheus() -> None:
    config = _yaml(DEPLOY / "collector" / "config.yaml")
    _check_pipelines(config)
    protocols = config["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"].endswith(":4317") and protocols["http"]["endpoint"].endswith(":4318")
    pipelines = config["service"]["pipelines"]
    assert pipelines["traces"]["exporters"] == ["otlp/jaeger"]
    assert config["exporters"]["otlp/jaeger"]["endpoint"] == "jaeger:4317"
    assert pipelines["metrics"]["exporters"] == ["prometheus"]
    scrape = _yaml(DEPLOY / "prometheus" / "prometheus.yml")["scrape_configs"][0]
    assert scrape["honor_labels"] is True
    assert scrape["static_configs"][0]["targets"] == [
        "otel-collector:" + config["exporters"]["prometheus"]["endpoint"].rsplit(":", 1)[1]]


def test_gateway_example_load_balances_agents_onto_gateways() -> None:
    agent = _yaml(DEPLOY / "collector" / "gateway" / "agent.yaml")
    gateway = _yaml(DEPLOY / "collector" / "gateway" / "gateway.yaml")
    _check_pipelines(agent)
    _check_pipelines(gateway)
    assert agent["exporters"]["loadbalancing/traces"]["routing_key"] == "traceID"
    assert agent["exporters"]["loadbalancing/metrics"]["routing_key"] == "service"
    hostname = agent["exporters"]["loadbalancing/traces"]["resolver"]["dns"]["hostname"]
    assert hostname == agent["exporters"]["loadbalancing/metrics"]["resolver"]["dns"]["hostname"]
    assert gateway["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"].endswith(":4317")


# --- Grafana ---------------------------------------------------------------------------------------------

def _datasources() -> dict[str, dict[str, Any]]:
    document = _yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "otel-perf.yaml")
    return {d["uid"]: d for d in document["datasources"]}


def _panels() -> list[dict[str, Any]]:
    return json.loads(DASHBOARD.read_text())["panels"]


def test_grafana_provisions_prometheus_and_jaeger_with_exemplar_trace_links() -> None:
    sources = _datasources()
    assert sources["prometheus"]["type"] == "prometheus"
    assert sources["prometheus"]["url"] == "http://prometheus:9090"
    assert sources["jaeger"]["type"] == "jaeger"
    assert sources["jaeger"]["url"] == "http://jaeger:16686"
    destinations = sources["prometheus"]["jsonData"]["exemplarTraceIdDestinations"]
    assert destinations[0]["datasourceUid"] == "jaeger"
    providers = _yaml(DEPLOY / "grafana" / "provisioning" / "dashboards" / "otel-perf.yaml")["providers"]
    mounts = _yaml(DEPLOY / "compose.yaml")["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{providers[0]['options']['path']}:ro" in mounts


def test_dashboard_uses_only_provisioned_data_sources() -> None:
    sources = _datasources()
    for panel in _panels():
        for item in [panel, *panel.get("targets", [])]:
            if "datasource" in item:
                assert item["datasource"]["uid"] in sources, panel["title"]
                assert item["datasource"]["type"] == sources[item["datasource"]["uid"]]["type"]


def test_dashboard_opens_with_an_objective_stat_per_objective_against_its_threshold() -> None:
    """The first row holds one stat panel per objective, red from the objective's threshold."""
    panels = _panels()
    assert panels[0]["type"] == "row" and "Objectives" in panels[0]["title"]
    stats = panels[1:1 + len(DEFAULT_OBJECTIVES)]
    for objective, panel in zip(DEFAULT_OBJECTIVES, stats, strict=True):
        assert panel["type"] == "stat"
        assert objective.record in panel["targets"][0]["expr"]
        steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
        assert steps[-1] == {"color": "red", "value": objective.threshold}
        assert panel["gridPos"]["y"] == 1


def test_dashboard_sections_and_trace_links() -> None:
    """Pools, tools, parsers, runtime/GC and memory pressure rows, trace links on latency panels, and a
    Jaeger search panel."""
    panels = _panels()
    rows = [p["title"] for p in panels if p["type"] == "row"]
    sections = ("Objectives", "Worker pools", "Tools", "Parsers", "Runtime and GC", "Memory pressure",
                "Traces")
    for section in sections:
        assert any(title.startswith(section) for title in rows), section
    linked = [p for p in panels
              if "Jaeger" in json.dumps(p.get("fieldConfig", {}).get("defaults", {}).get("links", []))]
    assert any("Job duration" in p["title"] for p in linked)
    assert any("Tool execution" in p["title"] for p in linked)
    assert any(p.get("datasource", {}).get("uid") == "jaeger" for p in panels)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("path", sorted(str(p.relative_to(DEPLOY)) for p in DEPLOY.rglob("*.y*ml")))
def test_every_yaml_file_parses(path: str) -> None:
    assert _yaml(DEPLOY / path) is not None
