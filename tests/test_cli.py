"""The otel-perf command: doctor, run and help."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

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


def test_doctor_lists_every_bad_value_and_unknown_name_and_exits_1(tmp_path: Path) -> None:
    """Four malformed or out-of-range values and two misspelt names: six problems, each named with what
    is used instead or the closest known name; exit 1. No endpoint is set, so nothing else is a problem."""
    env = clean_env(OTEL_PERF_MEMORY_THRESHOLD="abc", OTEL_PERF_TRACEMALLOC="70000",
                    OTEL_PERF_MEMORY_CHECK_INTERVAL="1e-9", OTEL_PERF_POOL_SPANS="2x",
                    OTEL_PERF_POOL_SPAN="false", OTEL_PERF_DEBUG_ADRESS="127.0.0.1:6060",
                    OTEL_PERF_OUTPUT_DIR=str(tmp_path / "out"))
    out = subprocess.run([str(BIN / "otel-perf"), "doctor"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out.stdout
    problems = [line.strip() for line in out.stdout.splitlines() if line.strip().startswith("problem:")]
    assert len(problems) == 6, out.stdout
    text = "\n".join(problems)
    assert "OTEL_PERF_MEMORY_THRESHOLD" in text and "'abc'" in text
    assert "'70000'; using 65535 instead" in text
    assert "'1e-9'; using 0.1 instead" in text
    assert "OTEL_PERF_POOL_SPANS to be true, false or slow, got '2x'" in text
    assert "OTEL_PERF_POOL_SPAN is not an otel-perf setting" in text and "did you mean OTEL_PERF_POOL_SPANS?" in text
    assert "did you mean OTEL_PERF_DEBUG_ADDR?" in text
    assert "6 problem(s) found." in out.stdout
    assert not out.stderr  # listed once, as problems, not also logged


def test_doctor_checks_the_spool_directory_without_making_it(tmp_path: Path) -> None:
    """An unusable OTEL_PERF_SPOOL_DIR is a problem, and the effective exporters show the plain-OTLP
    fallback; a usable one that does not exist yet is not made by looking at it."""
    (tmp_path / "file").write_text("")
    env = clean_env(OTEL_PERF_SPOOL_DIR=str(tmp_path / "file" / "spool"), OTEL_TRACES_EXPORTER="otlp",
                    OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{_free_port()}")
    out = subprocess.run([str(BIN / "otel-perf"), "doctor"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert f"OTEL_PERF_SPOOL_DIR={tmp_path / 'file' / 'spool'} cannot be used (not a directory" in out.stdout
    assert "traces   otlp (OTEL_TRACES_EXPORTER=otlp)" in out.stdout
    env["OTEL_PERF_SPOOL_DIR"] = str(tmp_path / "new" / "spool")
    out = subprocess.run([str(BIN / "otel-perf"), "doctor"], env=env, capture_output=True, text=True, timeout=60)
    assert "traces   otlp_durable (OTEL_TRACES_EXPORTER=otlp; spooled because OTEL_PERF_SPOOL_DIR is set)" \
        in out.stdout
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("command", [[], ["run"], ["doctor"], ["demo"], ["report"], ["profile"]])
def test_help_is_plain_text(command: list[str]) -> None:
    """Help shows no reST markup from docstrings (``literal``, :func:`x`)."""
    out = subprocess.run([str(BIN / "otel-perf"), *command, "--help"], env=clean_env(), capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "usage: otel-perf" in out.stdout
    assert "``" not in out.stdout and ":func:" not in out.stdout and ":class:" not in out.stdout
