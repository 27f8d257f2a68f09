"""Start-up (issue 20): what an instrumented program imports before its first export, and that what it
records before then still arrives.

The launcher is run as a subprocess against ``otel_perf.testing``'s real OTLP receiver. The program lists,
as its first statement, which of the modules that are deferred are loaded: profiling, durable export and
its spool, the report, the demo, and the OTLP exporter modules and encoders with gRPC, ``requests`` or
protobuf. With profiling and
durable export off, none may be; then it records a span, a metric and a log, and the receiver must get all
three (the export, at the latest at exit, loads the exporter in the export thread).
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest

from otel_perf import _otlpjson
from otel_perf.exporters.files import iter_requests
from otel_perf.testing import OTLPReceiver
from tests.conftest import BIN, clean_env

pytestmark = pytest.mark.e2e

#: Module prefixes loaded only when a feature is used or on the first export.
DEFERRED = ("otel_perf.profiling", "otel_perf.exporters.durable", "otel_perf.exporters._spool", "otel_perf.report",
            "otel_perf.demo", "otel_perf.cli", "grpc", "requests", "opentelemetry.exporter.otlp.proto.grpc",
            "opentelemetry.exporter.otlp.proto.http", "google.protobuf")

APP = textwrap.dedent("""
    import sys
    loaded = sorted(m for m in sys.modules if m.startswith(DEFERRED))
    import json, logging
    from pathlib import Path
    CONFIGURE
    from opentelemetry import metrics, trace
    with trace.get_tracer("app").start_as_current_span("before-first-export"):
        metrics.get_meter("app").create_counter("app.startup.requests", unit="{request}").add(5)
        logging.getLogger("app").warning("recorded before the first export")
    Path("loaded.json").write_text(json.dumps({"at_start": loaded,
                                               "before_export": sorted(m for m in sys.modules
                                                                       if m.startswith(DEFERRED))}))
""")


def _app(tmp_path: Path, configure: bool = False) -> Path:
    # configure() sets up the logs pipeline; a program attaches the SDK's logging handler itself.
    call = ("import otel_perf; otel_perf.configure(); from opentelemetry.sdk._logs import LoggingHandler; "
            "logging.getLogger('app').addHandler(LoggingHandler())") if configure else ""
    path = tmp_path / "app.py"
    path.write_text(f"DEFERRED = {DEFERRED!r}\n" + APP.replace("CONFIGURE", call))
    return path


def _env(receiver: OTLPReceiver, protocol: str, *, exporters_set: bool) -> dict[str, str]:
    env = receiver.env(protocol)
    if not exporters_set:  # otel-perf picks the exporter (OTLP, since an endpoint is set)
        for variable in ("OTEL_TRACES_EXPORTER", "OTEL_METRICS_EXPORTER", "OTEL_LOGS_EXPORTER"):
            del env[variable]
    # Long export delays: nothing is exported while the program runs, only at its exit.
    env.update(OTEL_BSP_SCHEDULE_DELAY="60000", OTEL_BLRP_SCHEDULE_DELAY="60000",
               OTEL_METRIC_EXPORT_INTERVAL="60000", OTEL_PYTHON_LOGGING_AUTO_INSTRUMENTATION_ENABLED="true",
               OTEL_SERVICE_NAME="startup-app")
    return clean_env(**env)


def _assert_all_arrived(receiver: OTLPReceiver, transport: str) -> None:
    assert [s.name for s in receiver.spans(transport)] == ["before-first-export"]
    (point,) = receiver.latest_points("app.startup.requests")
    assert point.value == 5
    assert "recorded before the first export" in [str(log.body) for log in receiver.logs(transport)]


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_otel_perf_run_loads_no_deferred_module_before_the_first_export(
        protocol: str, otlp_receiver: OTLPReceiver, tmp_path: Path) -> None:
    """Under ``otel-perf run`` with an OTLP endpoint, profiling and durable export off, the program starts
    without profiling, durable export, the report, the demo or the OTLP exporter stack (gRPC, requests)
    loaded, and what it records before the first export reaches the receiver."""
    _app(tmp_path)
    completed = subprocess.run([str(BIN / "otel-perf"), "run", "-q", "--", "python", "app.py"],
                               env=_env(otlp_receiver, protocol, exporters_set=False), cwd=tmp_path,
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    loaded = json.loads((tmp_path / "loaded.json").read_text())
    assert loaded == {"at_start": [], "before_export": []}
    _assert_all_arrived(otlp_receiver, "grpc" if protocol == "grpc" else "http")


def test_otel_perf_run_writing_files_loads_no_encoder_before_the_first_export(tmp_path: Path) -> None:
    """Without an endpoint ``otel-perf run`` writes OTLP JSON lines: the OTLP encoders and protobuf load
    at the first export too, and the files hold everything recorded before it."""
    _app(tmp_path)
    env = clean_env(OTEL_BSP_SCHEDULE_DELAY="60000", OTEL_METRIC_EXPORT_INTERVAL="60000",
                    OTEL_PERF_OUTPUT_DIR=str(tmp_path / "data"))
    completed = subprocess.run([str(BIN / "otel-perf"), "run", "-q", "--", "python", "app.py"], env=env,
                               cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert json.loads((tmp_path / "loaded.json").read_text()) == {"at_start": [], "before_export": []}
    requests = [request for _, request in iter_requests(tmp_path / "data")]
    spans = [span.name for request in requests for span in _otlpjson.spans(request)]
    assert spans == ["before-first-export"]


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_configure_defers_the_otlp_exporters_and_loses_nothing(
        protocol: str, otlp_receiver: OTLPReceiver, tmp_path: Path) -> None:
    """``otel_perf.configure()`` with ``otlp`` named for every signal: the exporter modules load on the first
    export (here the one at exit), and the span, metric and log recorded before it arrive."""
    _app(tmp_path, configure=True)
    completed = subprocess.run([str(BIN / "python"), "app.py"], env=_env(otlp_receiver, protocol, exporters_set=True),
                               cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    loaded = json.loads((tmp_path / "loaded.json").read_text())
    assert loaded == {"at_start": [], "before_export": []}
    _assert_all_arrived(otlp_receiver, "grpc" if protocol == "grpc" else "http")


def test_profiling_and_the_debug_server_load_when_asked_for(otlp_receiver: OTLPReceiver, tmp_path: Path) -> None:
    """The deferred features still start when their variables ask for them: the debug server (root
    process) loads the profiling server, and durable export its spool."""
    _app(tmp_path)
    env = _env(otlp_receiver, "grpc", exporters_set=False)
    env.update(OTEL_PERF_DEBUG_ADDR="127.0.0.1:0", OTEL_PERF_SPOOL_DIR=str(tmp_path / "spool"))
    completed = subprocess.run([str(BIN / "otel-perf"), "run", "-q", "--", "python", "app.py"], env=env,
                               cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    before_export = json.loads((tmp_path / "loaded.json").read_text())["before_export"]
    assert {"otel_perf.profiling.server", "otel_perf.exporters.durable"} <= set(before_export)
    _assert_all_arrived(otlp_receiver, "grpc")


def test_otel_perf_run_gives_the_program_the_python_path_the_launcher_gives(tmp_path: Path) -> None:
    """``otel-perf run`` starts no launcher Python: it sets ``PYTHONPATH`` itself, exactly as
    ``opentelemetry-instrument`` does, and the program runs instrumented (its ``sitecustomize`` ran)."""
    code = ("import os, sys; print(os.environ['PYTHONPATH']); "
            "print('opentelemetry.instrumentation.auto_instrumentation' in sys.modules)")
    env = clean_env(PYTHONPATH=f"{tmp_path / 'a'}{os.pathsep}{tmp_path / 'b'}", OTEL_TRACES_EXPORTER="none",
                    OTEL_METRICS_EXPORTER="none", OTEL_LOGS_EXPORTER="none")
    outputs = [subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
                              check=True).stdout
               for argv in ([str(BIN / "opentelemetry-instrument"), "python", "-c", code],
                            [str(BIN / "otel-perf"), "run", "-q", "--", "python", "-c", code])]
    assert outputs[0] == outputs[1]
    assert outputs[1].splitlines()[1] == "True"
