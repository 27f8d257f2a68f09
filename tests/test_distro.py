"""The launcher's way in, in process: the distro's defaults, which configurator the launcher loads, and the
SDK set-up otel-perf does when none is loaded (with its fallback to the public API)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk import _configuration as sdk_configuration
from opentelemetry.sdk.trace import TracerProvider

from otel_perf import _otlpjson, _sdk, _sdk_internals
from otel_perf._config import load_settings
from otel_perf.distro import STOCK_DEFAULTS, OtelPerfDistro
from otel_perf.exporters.files import iter_requests

pytestmark = pytest.mark.usefixtures("otel_globals")


@pytest.fixture
def no_otel_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for key in list(os.environ):
        if key.startswith("OTEL_"):
            monkeypatch.delenv(key)
    return monkeypatch


def test_distro_sets_exactly_the_stock_distros_defaults(no_otel_env: pytest.MonkeyPatch) -> None:
    """otel-perf's distro and opentelemetry-distro's set the same variables to the same values, and both
    keep what the user set."""
    from opentelemetry.distro import OpenTelemetryDistro

    OpenTelemetryDistro().configure()
    stock = {key: os.environ[key] for key in os.environ if key.startswith("OTEL_")}
    for key in stock:
        no_otel_env.delenv(key)
    OtelPerfDistro().configure()
    ours = {key: os.environ[key] for key in os.environ if key.startswith("OTEL_")}
    assert ours == stock == STOCK_DEFAULTS

    no_otel_env.setenv("OTEL_TRACES_EXPORTER", "console")
    OtelPerfDistro().configure()
    assert os.environ["OTEL_TRACES_EXPORTER"] == "console"


def test_configurator_loaded_follows_the_launchers_rule() -> None:
    """The launcher loads the configurator OTEL_PYTHON_CONFIGURATOR names, else the first one installed
    (opentelemetry-distro's ``configurator`` here); otel-perf registers none."""
    from importlib.metadata import entry_points

    names = {ep.name for ep in entry_points(group="opentelemetry_configurator")}
    assert names == {"configurator"}, "the test extra installs opentelemetry-distro, and otel-perf adds none"
    assert _sdk.configurator_loaded({})
    assert _sdk.configurator_loaded({"OTEL_PYTHON_CONFIGURATOR": "configurator"})
    assert not _sdk.configurator_loaded({"OTEL_PYTHON_CONFIGURATOR": "otel_perf"})
    assert not _sdk.configurator_loaded({"OTEL_PYTHON_CONFIGURATOR": ""})


@pytest.mark.parametrize("name", ["otlp", "otlp_proto_grpc", "otlp_proto_http", "console", "otel_perf_file"])
@pytest.mark.parametrize("protocols", [{}, {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
                                       {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
                                       {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                                        "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": " http/protobuf "}])
def test_exporter_name_fallback_resolves_as_the_sdk_does(
    no_otel_env: pytest.MonkeyPatch, name: str, protocols: dict[str, str]
) -> None:
    """The public-path resolution used when the SDK's private one is missing gives the SDK's answers."""
    for key, value in protocols.items():
        no_otel_env.setenv(key, value)
    for signal in ("traces", "metrics", "logs"):
        expected = sdk_configuration._get_exporter_entry_point(name, signal)  # type: ignore[arg-type]
        assert _sdk_internals.resolve_exporter_name(name, signal) == expected


def test_exporter_name_fallback_rejects_an_unknown_protocol_as_the_sdk_does(
    no_otel_env: pytest.MonkeyPatch,
) -> None:
    no_otel_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon")
    with pytest.raises(RuntimeError, match="carrier-pigeon"):
        sdk_configuration._get_exporter_entry_point("otlp", "traces")
    with pytest.raises(RuntimeError, match="carrier-pigeon"):
        _sdk_internals.resolve_exporter_name("otlp", "traces")


def _file_export_env(monkeypatch: pytest.MonkeyPatch, out: Path) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otel_perf_file")
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "none")
    monkeypatch.setenv("OTEL_LOGS_EXPORTER", "none")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "no-configurator")
    monkeypatch.setenv("OTEL_PERF_OUTPUT_DIR", str(out))


def _span_names(out: Path) -> list[str]:
    return [s.name for _, r in iter_requests(out) for s in _otlpjson.spans(r)]


def test_sdk_set_up_with_the_sdks_configurator(no_otel_env: pytest.MonkeyPatch, tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    """No configurator loaded: otel-perf sets the SDK up from the environment through the SDK's own
    configurator, with no log line."""
    _file_export_env(no_otel_env, tmp_path)
    with caplog.at_level(logging.DEBUG, logger="otel_perf"):
        _sdk.configure_sdk_from_environment(load_settings())
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    assert provider.resource.attributes["service.name"] == "no-configurator"
    with trace.get_tracer("app").start_as_current_span("work"):
        pass
    provider.shutdown()
    assert _span_names(tmp_path) == ["work"]
    assert not caplog.records


def test_sdk_set_up_falls_back_to_the_public_api_when_the_configurator_is_missing(
    no_otel_env: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An SDK without ``_OTelSDKConfigurator`` (the private class otel-perf uses) gets the same set-up
    through the public API, and one INFO line says so."""
    _file_export_env(no_otel_env, tmp_path)
    no_otel_env.delattr(sdk_configuration, "_OTelSDKConfigurator")
    no_otel_env.delattr(sdk_configuration, "_get_exporter_entry_point")
    with caplog.at_level(logging.DEBUG, logger="otel_perf"):
        _sdk.configure_sdk_from_environment(load_settings())
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    assert provider.resource.attributes["service.name"] == "no-configurator"
    with trace.get_tracer("app").start_as_current_span("work"):
        pass
    provider.shutdown()
    assert _span_names(tmp_path) == ["work"]
    lines = [r for r in caplog.records if "public OpenTelemetry API" in r.getMessage()]
    assert {r.levelno for r in lines} == {logging.INFO}
    # One line, once: the configurator's. otel-perf's own exporter (otel_perf_file) needs no name
    # resolution, so the missing _get_exporter_entry_point is never reached.
    assert len({r.getMessage() for r in lines}) == 1


def test_sdk_set_up_leaves_providers_a_distro_already_set(no_otel_env: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    """A vendor distro that set providers itself keeps them: nothing is replaced or added."""
    _file_export_env(no_otel_env, tmp_path)
    provider = TracerProvider()
    trace.set_tracer_provider(provider)
    _sdk.configure_sdk_from_environment(load_settings())
    assert trace.get_tracer_provider() is provider
    assert not provider._active_span_processor._span_processors


def test_distro_defaults_to_durable_otlp_when_a_spool_directory_is_set(no_otel_env: pytest.MonkeyPatch,
                                                                       tmp_path: Path) -> None:
    """OTEL_PERF_SPOOL_DIR asks for durable export: the default exporters are otlp_durable; explicit ones
    stay as set."""
    no_otel_env.setenv("OTEL_PERF_SPOOL_DIR", str(tmp_path / "spool"))
    no_otel_env.setenv("OTEL_LOGS_EXPORTER", "none")
    OtelPerfDistro().configure()
    assert os.environ["OTEL_TRACES_EXPORTER"] == os.environ["OTEL_METRICS_EXPORTER"] == "otlp_durable"
    assert os.environ["OTEL_LOGS_EXPORTER"] == "none"
    assert os.environ["OTEL_EXPORTER_OTLP_PROTOCOL"] == "grpc"
