"""Live alerting on loopback: app -> real Prometheus -> real Alertmanager -> webhook, firing and resolved.

The app exposes its metrics the way the ``prometheus`` extra does (``PrometheusMetricReader`` plus
``prometheus_client.start_http_server`` on 127.0.0.1). Its pool jobs really run in a ThreadPoolExecutor and
are timed; the durations are recorded through the SDK under the catalogue's name, unit and boundaries (the
workers instrumentation is built on another branch, so the app records ``otel_perf.pool.job.duration``
itself). Prometheus (scrape and evaluation every second) evaluates the shipped rules file with each ``for:``
set to 0s, so that the test takes seconds instead of minutes (the ``for:`` durations are covered by the
promtool tests); the Alertmanager configuration is the shipped one with the webhook pointed at this test and
short group timings. Every server is started here, bounded in time and stopped by its process.
"""

from __future__ import annotations

import importlib.util
import json
import re
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest
import yaml

from tests.conftest import PYTHON, ROOT, clean_env, require_binary

pytestmark = pytest.mark.e2e

DEPLOY = ROOT / "deploy"
SERVICE = "otel-perf-e2e"
ALERT = "OtelPerfCommandLatencyObjectiveMissed"

APP = r'''
import sys, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from prometheus_client import start_http_server

from otel_perf import _semconv as sc

control = Path(sys.argv[1])
server, _thread = start_http_server(0, addr="127.0.0.1")
provider = MeterProvider(resource=Resource.create({"service.name": sys.argv[2]}),
                         metric_readers=[PrometheusMetricReader()])
spec = sc.metric("otel_perf.pool.job.duration")
duration = provider.get_meter(sc.INSTRUMENTATION_SCOPE).create_histogram(
    spec.name, unit=spec.unit, description=spec.description,
    explicit_bucket_boundaries_advisory=list(sc.DURATION_BOUNDARIES))
attrs = {sc.POOL_NAME: "commands", sc.POOL_KIND: sc.POOL_KIND_THREAD, sc.JOB_OUTCOME: sc.OUTCOME_OK}

def job(seconds):
    start = time.perf_counter()
    time.sleep(seconds)
    duration.record(time.perf_counter() - start, attrs)

print(server.server_port, flush=True)
deadline = time.monotonic() + 180
with ThreadPoolExecutor(16, thread_name_prefix="commands") as pool:
    while time.monotonic() < deadline:
        mode = control.read_text().strip()
        if mode == "stop":
            break
        # slow: 0.6 s commands (objective: p95 < 0.5 s); normal: 1 ms commands, many of them.
        seconds, count = (0.6, 16) if mode == "slow" else (0.001, 400)
        list(pool.map(job, [seconds] * count))
'''


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _ready(url: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} did not become ready")


def _load_webhook_module() -> Any:
    spec = importlib.util.spec_from_file_location("webhook_log", DEPLOY / "alertmanager" / "webhook_log.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def processes() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start processes; every one of them is stopped (terminate, then kill) when the test ends."""
    started: list[subprocess.Popen[str]] = []
    logs: list[IO[str]] = []

    def start(args: list[str], log: Path | None = None, **kwargs: Any) -> subprocess.Popen[str]:
        if log is not None:
            logs.append(log.open("w"))
            kwargs.update(stdout=subprocess.DEVNULL, stderr=logs[-1])
        proc = subprocess.Popen(args, text=True, **kwargs)
        started.append(proc)
        return proc

    yield start
    for proc in reversed(started):
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
    for handle in logs:
        handle.close()


def test_slow_jobs_fire_the_objective_alert_at_the_webhook_and_resolve_when_jobs_are_fast(
    tmp_path: Path, processes: Callable[..., subprocess.Popen[str]]
) -> None:
    """Slow pool jobs make the shipped p95 objective alert reach the webhook through real Prometheus and
    Alertmanager; once jobs are fast again the resolved notification arrives."""
    prometheus = require_binary("prometheus", "prometheus")
    alertmanager = require_binary("prometheus-alertmanager", "prometheus-alertmanager")

    # Webhook: the same receiver compose.yaml runs, in a thread of this test.
    notifications: list[dict[str, Any]] = []
    webhook = _load_webhook_module().make_server("127.0.0.1", 0, notifications.append)
    webhook_thread = threading.Thread(target=webhook.serve_forever, daemon=True)
    webhook_thread.start()
    try:
        # The app, slow from the start.
        control = tmp_path / "mode"
        control.write_text("slow")
        (tmp_path / "app.py").write_text(APP)
        app = processes([PYTHON, str(tmp_path / "app.py"), str(control), SERVICE], env=clean_env(),
                        stdout=subprocess.PIPE)
        assert app.stdout is not None
        app_port = int(app.stdout.readline())

        # Alertmanager: the shipped configuration, webhook and timings changed for a test.
        am_port = _free_port()
        am_config = yaml.safe_load((DEPLOY / "alertmanager" / "alertmanager.yml").read_text())
        am_config["route"].update(group_wait="0s", group_interval="1s", repeat_interval="1m")
        for route in am_config["route"].get("routes", []):
            route.pop("repeat_interval", None)
        for receiver in am_config["receivers"]:
            for hook in receiver.get("webhook_configs", []):
                hook["url"] = f"http://127.0.0.1:{webhook.server_port}/alerts"
        (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump(am_config))
        processes([alertmanager, f"--config.file={tmp_path / 'alertmanager.yml'}",
                   f"--storage.path={tmp_path / 'am'}", f"--web.listen-address=127.0.0.1:{am_port}",
                   "--cluster.listen-address="],
                  log=tmp_path / "am.log")

        # Prometheus: the shipped rules (with `for: 0s`), scraping the app every second.
        rules = re.sub(r"(?m)^(\s+)for: \S+$", r"\1for: 0s",
                       (DEPLOY / "prometheus" / "rules" / "otel-perf.rules.yml").read_text())
        (tmp_path / "otel-perf.rules.yml").write_text(rules)
        prom_port = _free_port()
        prom_config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": ["otel-perf.rules.yml"],
            "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]},
            "scrape_configs": [{"job_name": SERVICE,
                                "static_configs": [{"targets": [f"127.0.0.1:{app_port}"]}]}],
        }
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(prom_config))
        processes([prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
                   f"--storage.tsdb.path={tmp_path / 'prom'}", f"--web.listen-address=127.0.0.1:{prom_port}"],
                  log=tmp_path / "prometheus.log")
        deadline = time.monotonic() + 30
        _ready(f"http://127.0.0.1:{am_port}/-/ready", deadline)
        _ready(f"http://127.0.0.1:{prom_port}/-/ready", deadline)

        def alerts(status: str) -> list[dict[str, Any]]:
            return [a for n in list(notifications) for a in n.get("alerts", [])
                    if a["labels"].get("alertname") == ALERT and a["status"] == status]

        def wait_for(status: str, seconds: float) -> dict[str, Any]:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                found = alerts(status)
                if found:
                    return found[0]
                assert app.poll() is None, "the app exited early"
                time.sleep(0.2)
            logs = (tmp_path / "prometheus.log").read_text()[-2000:]
            raise AssertionError(f"no {status} {ALERT} at the webhook within {seconds}s; "
                                 f"got {notifications!r}; prometheus log tail: {logs}")

        firing = wait_for("firing", 60)
        assert firing["labels"]["job"] == SERVICE
        assert firing["labels"]["objective"] == "command_p95"
        runbook = firing["annotations"]["runbook_url"]
        assert runbook == "deploy/README.md#otelperfcommandlatencyobjectivemissed"
        assert "objective < 500ms" in firing["annotations"]["summary"]

        # Back to normal: many fast commands pull the 5-minute p95 under 0.5 s and the alert resolves.
        control.write_text("normal")
        resolved = wait_for("resolved", 90)
        assert resolved["labels"]["job"] == SERVICE
        query = urllib.request.urlopen(
            f"http://127.0.0.1:{prom_port}/api/v1/query?query=job:otel_perf_pool_job_duration_seconds:p95_5m",
            timeout=5)
        result = json.loads(query.read())["data"]["result"]
        assert result and float(result[0]["value"][1]) < 0.5
        control.write_text("stop")
        app.wait(timeout=15)
    finally:
        webhook.shutdown()
        webhook.server_close()
        webhook_thread.join(timeout=5)
