"""The otel-perf command: doctor and run."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

from tests.conftest import BIN, clean_env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_doctor_reports_unreachable_endpoint_clearly() -> None:
    port = _free_port()
    env = clean_env(OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}", OTEL_PYTHON_DISTRO="otel_perf")
    out = subprocess.run([str(BIN / "otel-perf"), "doctor"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert f"http://127.0.0.1:{port}: does not answer" in out.stdout
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" in out.stdout
    assert "would load: otel_perf (set by OTEL_PYTHON_DISTRO)" in out.stdout


def test_doctor_with_answering_endpoint_and_settings() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        env = clean_env(OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}", OTEL_PERF_MEMORY_THRESHOLD="0.9")
        out = subprocess.run([str(BIN / "otel-perf"), "doctor"], env=env, capture_output=True, text=True,
                             timeout=60)
    assert out.returncode == 0, out.stdout
    assert "answers" in out.stdout
    assert "OTEL_PERF_MEMORY_THRESHOLD" in out.stdout and "0.9" in out.stdout


def test_doctor_names_unknown_distro() -> None:
    env = clean_env(OTEL_PYTHON_DISTRO="nope")
    out = subprocess.run([str(BIN / "otel-perf"), "doctor"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "OTEL_PYTHON_DISTRO=nope names no installed distro" in out.stdout


def test_run_without_command_explains(tmp_path: Path) -> None:
    out = subprocess.run([str(BIN / "otel-perf"), "run"], env=clean_env(), capture_output=True, text=True,
                         timeout=60, cwd=tmp_path)
    assert out.returncode == 2
    assert "otel-perf run -- python app.py" in out.stderr


def test_run_passes_exit_code_through(tmp_path: Path) -> None:
    (tmp_path / "fail.py").write_text("import sys; sys.exit(7)\n")
    out = subprocess.run([str(BIN / "otel-perf"), "run", "-q", "--", "python", "fail.py"], env=clean_env(),
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 7
