"""Where profiles go: the standard OTEL_EXPORTER_OTLP_* settings (and their PROFILES_ variants), resolved
in one place; OTLP over gRPC and HTTP to the real receiver; durable spooling; OTLP JSON lines files."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from otel_perf._config import load_settings
from otel_perf.exporters.files import FileProfileExporter
from otel_perf.exporters.otlp import resolve_target
from otel_perf.exporters.profiles import OTLPProfileExporter, exporter_kind
from otel_perf.profiling import otlp
from otel_perf.profiling.snapshot import Snapshot
from otel_perf.testing import OTLPReceiver

TRACE_ID, SPAN_ID = "5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174"


def request() -> Any:
    """A small profile: two stacks of one thread, one of them in a span."""
    snapshot = Snapshot(
        mode="cpu", period_ns=10_000_000, start_unix_ns=1_700_000_000_000_000_000, duration_ns=2_000_000_000,
        locations=[(("main", "app.py", 1), 3), (("hot", "app.py", 10), 12)],
        counts={(("MainThread", "", (TRACE_ID, SPAN_ID, "root")), (1, 2)): [3, 30_000_000],
                (("MainThread", "", ("", "", "")), (1,)): [1, 10_000_000]},
        comments=[],
    )
    return otlp.encode(snapshot, {"service.name": "svc", "process.pid": 42})


# --- settings -------------------------------------------------------------------------------------------

def test_profiles_follow_the_general_endpoint_with_their_own_http_path() -> None:
    """Under OTEL_EXPORTER_OTLP_ENDPOINT the HTTP path is /v1development/profiles; gRPC keeps the URL."""
    http = resolve_target("profiles", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/",
                                       "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"})
    assert http.endpoint == "http://collector:4318/v1development/profiles" and http.protocol == "http/protobuf"
    grpc = resolve_target("profiles", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"})
    assert grpc.endpoint == "http://collector:4317" and grpc.protocol == "grpc" and grpc.insecure


def test_the_profiles_variables_override_the_general_ones() -> None:
    """Each OTEL_EXPORTER_OTLP_PROFILES_* setting wins over OTEL_EXPORTER_OTLP_*; the rest is inherited."""
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://general:4317", "OTEL_EXPORTER_OTLP_HEADERS": "a=1",
        "OTEL_EXPORTER_OTLP_COMPRESSION": "none", "OTEL_EXPORTER_OTLP_TIMEOUT": "3",
        "OTEL_EXPORTER_OTLP_PROFILES_ENDPOINT": "https://profiles.example:4443/custom",
        "OTEL_EXPORTER_OTLP_PROFILES_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_PROFILES_HEADERS": "authorization=Bearer%20x,tenant=t1",
        "OTEL_EXPORTER_OTLP_PROFILES_COMPRESSION": "gzip", "OTEL_EXPORTER_OTLP_PROFILES_TIMEOUT": "7.5",
        "OTEL_EXPORTER_OTLP_PROFILES_CERTIFICATE": "/etc/ca.pem",
        "OTEL_EXPORTER_OTLP_PROFILES_CLIENT_KEY": "/etc/key.pem",
        "OTEL_EXPORTER_OTLP_PROFILES_CLIENT_CERTIFICATE": "/etc/cert.pem",
    }
    target = resolve_target("profiles", env)
    assert target.endpoint == "https://profiles.example:4443/custom"  # a signal's own endpoint is used as is
    assert target.protocol == "http/protobuf" and target.compression == "gzip" and target.timeout == 7.5
    assert dict(target.headers) == {"authorization": "Bearer x", "tenant": "t1"}
    assert not target.insecure  # https
    assert (target.certificate_file, target.client_key_file, target.client_certificate_file) == (
        "/etc/ca.pem", "/etc/key.pem", "/etc/cert.pem")
    inherited = resolve_target("profiles", {k: v for k, v in env.items() if "PROFILES" not in k})
    assert inherited.timeout == 3.0 and dict(inherited.headers) == {"a": "1"} and inherited.compression is None


def test_a_bad_profiles_timeout_is_reported_once_and_the_default_used(caplog: pytest.LogCaptureFixture) -> None:
    """A malformed value gets one message naming what was expected, and export goes on with 10 s."""
    with caplog.at_level(logging.WARNING, logger="otel_perf"):
        for _ in range(2):
            target = resolve_target("profiles", {"OTEL_EXPORTER_OTLP_PROFILES_TIMEOUT": "soon"})
    assert target.timeout == 10.0
    messages = [r.getMessage() for r in caplog.records if "soon" in r.getMessage()]
    assert len(messages) == 1 and "OTEL_EXPORTER_OTLP_TIMEOUT" in messages[0] and "profiles" in messages[0]


@pytest.mark.parametrize(("env", "settings", "kind"), [
    ({"OTEL_TRACES_EXPORTER": "otlp"}, {}, "otlp"),
    ({"OTEL_TRACES_EXPORTER": "otlp_proto_http"}, {}, "otlp"),
    ({"OTEL_TRACES_EXPORTER": "otlp_durable"}, {}, "otlp_durable"),
    ({"OTEL_TRACES_EXPORTER": "otel_perf_file"}, {}, "otel_perf_file"),
    ({}, {}, "otel_perf_file"),  # nothing set, no endpoint: what otel-perf picks for traces
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}, {}, "otlp"),
    ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_PROFILES_ENDPOINT": "http://c:4317"}, {}, "otlp"),
    ({"OTEL_TRACES_EXPORTER": "console"}, {}, "otel_perf_file"),
])
def test_profiles_go_where_the_traces_go(env: dict[str, str], settings: dict[str, Any], kind: str) -> None:
    """The trace exporter's name decides (module docstring of otel_perf.exporters.profiles)."""
    assert exporter_kind(load_settings(env, **settings), env) == kind


def test_a_spool_directory_makes_otlp_profiles_durable(tmp_path: Path) -> None:
    """OTEL_PERF_SPOOL_DIR turns otlp into otlp_durable, for profiles as for the other signals."""
    env = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_PERF_SPOOL_DIR": str(tmp_path / "spool")}
    assert exporter_kind(load_settings(env), env) == "otlp_durable"


# --- sending ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("protocol", "compression"), [("grpc", "none"), ("grpc", "gzip"),
                                                       ("http/protobuf", "none"), ("http/protobuf", "gzip")])
def test_otlp_profiles_reach_the_receiver(otlp_receiver: OTLPReceiver, protocol: str, compression: str) -> None:
    """gRPC ProfilesService/Export and HTTP POST /v1development/profiles, compressed or not: the receiver
    gets the very request that was sent."""
    env = {**otlp_receiver.env(protocol), "OTEL_EXPORTER_OTLP_PROFILES_COMPRESSION": compression}
    exporter = OTLPProfileExporter(resolve_target("profiles", env))
    sent = request()
    try:
        assert exporter.export(sent, 4)
    finally:
        exporter.shutdown()
    (received,) = otlp_receiver.profiles("grpc" if protocol == "grpc" else "http")
    assert received == sent


def test_an_unreachable_backend_is_retried_within_the_timeout_then_the_profile_dropped(
        otlp_receiver: OTLPReceiver, caplog: pytest.LogCaptureFixture) -> None:
    """UNAVAILABLE is retried with backoff until the exporter's timeout, then the profile is dropped with
    one log line; the program is never held longer than the timeout."""
    otlp_receiver.status = "unavailable"
    env = {**otlp_receiver.env("http/protobuf"), "OTEL_EXPORTER_OTLP_TIMEOUT": "1.5"}
    exporter = OTLPProfileExporter(resolve_target("profiles", env), min_backoff=0.1)
    began = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="otel_perf"):
        assert not exporter.export(request(), 4)
        assert not exporter.export(request(), 4)
    assert time.monotonic() - began < 2 * 1.5 + 1
    assert len([r for r in caplog.records if "cannot be sent" in r.getMessage()]) == 1
    otlp_receiver.status = "ok"
    assert exporter.export(request(), 4)  # the backend is back
    exporter.shutdown()


def test_a_rejected_profile_is_dropped_at_once(otlp_receiver: OTLPReceiver, caplog: pytest.LogCaptureFixture) -> None:
    """A non-retryable answer (gRPC INVALID_ARGUMENT) drops the profile without retrying."""
    otlp_receiver.status = "reject"
    exporter = OTLPProfileExporter(resolve_target("profiles", otlp_receiver.env("grpc")), min_backoff=5)
    began = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="otel_perf"):
        assert not exporter.export(request(), 4)
    assert time.monotonic() - began < 4
    assert any("rejected a profile" in r.getMessage() for r in caplog.records)
    exporter.shutdown()


def test_durable_profiles_survive_a_backend_outage(otlp_receiver: OTLPReceiver, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch, meter_provider: Any) -> None:
    """In durable mode a profile is kept in <spool>/profiles/ while the backend is down and delivered once
    it is back."""
    from otel_perf.exporters.durable import DurableProfileExporter

    for key, value in otlp_receiver.env("grpc").items():
        monkeypatch.setenv(key, value)
    otlp_receiver.status = "unavailable"
    exporter = DurableProfileExporter(spool_dir=str(tmp_path), min_backoff=0.05, max_backoff=0.2,
                                      poll_interval=0.1, meter_provider=meter_provider)
    sent = request()
    try:
        assert exporter.export(sent, 4)
        assert list((tmp_path / "profiles").glob("*.otlp"))
        assert not exporter.force_flush(300)
        otlp_receiver.status = "ok"
        assert exporter.force_flush(10_000)
    finally:
        exporter.shutdown()
    assert otlp_receiver.profiles() == [sent]
    assert not list((tmp_path / "profiles").glob("*.otlp"))


def test_file_profiles_are_otlp_json_lines_with_hex_ids(tmp_path: Path) -> None:
    """profiles-<start>-<pid>.jsonl, one request per line; trace, span and profile ids in hex as OTLP JSON
    writes them."""
    exporter = FileProfileExporter(tmp_path)
    assert exporter.export(request(), 4)
    exporter.shutdown()
    (path,) = tmp_path.glob("profiles-*.jsonl")
    line = json.loads(path.read_text().splitlines()[0])
    link = line["dictionary"]["linkTable"][1]
    assert (link["traceId"], link["spanId"]) == (TRACE_ID, SPAN_ID)
    profile = line["resourceProfiles"][0]["scopeProfiles"][0]["profiles"][0]
    assert len(profile["profileId"]) == 32 and int(profile["profileId"], 16) != 0
