"""What OTEL_PERF_SPOOL_DIR does to the exporter names, and how an unusable spool directory is found."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from otel_perf._config import load_settings
from otel_perf.exporters._spool import check_directory
from otel_perf.exporters.otlp import apply_spool_choice, spooled_exporter_names
from tests.conftest import clean_env


def _settings(spool_dir: Path | None) -> object:
    return load_settings({"OTEL_PERF_SPOOL_DIR": str(spool_dir)} if spool_dir else {})


@pytest.mark.parametrize(("names", "expected"), [
    (["otlp"], ["otlp_durable"]),
    (["otlp", "console"], ["otlp_durable", "console"]),
    (["otlp_durable", "otlp"], ["otlp_durable"]),  # one spooling exporter, not two sharing the spool
    (["console"], ["console"]),
    (["otlp_proto_http"], ["otlp_proto_http"]),  # an explicit protocol choice stays as set
    (["otel_perf_file"], ["otel_perf_file"]),
    (["some_vendor"], ["some_vendor"]),
])
def test_with_a_usable_spool_directory_otlp_means_durable_otlp(
        tmp_path: Path, names: list[str], expected: list[str]) -> None:
    """A spool directory says "do not lose my data": `otlp` spools; other explicit choices stay as set."""
    assert spooled_exporter_names(names, _settings(tmp_path / "spool")) == expected  # type: ignore[arg-type]


def test_without_a_spool_directory_the_names_stay(tmp_path: Path) -> None:
    assert spooled_exporter_names(["otlp", "console"], _settings(None)) == ["otlp", "console"]  # type: ignore[arg-type]


def test_an_unusable_spool_directory_means_plain_otlp_with_one_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Under a regular file nothing can be spooled: `otlp_durable` becomes `otlp`, warned once, naming the
    variable, the directory and why."""
    (tmp_path / "file").write_text("")
    settings = _settings(tmp_path / "file" / "spool")
    with caplog.at_level(logging.WARNING, logger="otel_perf"):
        assert spooled_exporter_names(["otlp_durable"], settings) == ["otlp"]  # type: ignore[arg-type]
        assert spooled_exporter_names(["otlp"], settings) == ["otlp"]  # type: ignore[arg-type]
    (message,) = [r.getMessage() for r in caplog.records]
    assert "OTEL_PERF_SPOOL_DIR" in message and str(tmp_path / "file" / "spool") in message
    assert "Not a directory" in message


def test_apply_spool_choice_rewrites_only_the_exporter_variables_it_must(tmp_path: Path) -> None:
    """The launcher's configurator reads the names from the environment: `otlp` is rewritten there."""
    environ = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_METRICS_EXPORTER": "console", "OTHER": "otlp"}
    apply_spool_choice(environ, _settings(tmp_path / "spool"))  # type: ignore[arg-type]
    assert environ == {"OTEL_TRACES_EXPORTER": "otlp_durable", "OTEL_METRICS_EXPORTER": "console",
                       "OTHER": "otlp"}


@pytest.mark.parametrize("case", ["parent-is-a-file", "signal-dir-is-a-file"])
def test_check_directory_says_why_and_looking_changes_nothing(tmp_path: Path, case: str) -> None:
    """The check names the offending path; without ``create`` (otel-perf doctor) it makes nothing."""
    if case == "parent-is-a-file":
        (tmp_path / "file").write_text("")
        root, offending = tmp_path / "file" / "spool", tmp_path / "file"
    else:
        root = tmp_path / "spool"
        root.mkdir()
        (root / "metrics").write_text("")
        offending = root / "metrics"
    assert str(offending) in (check_directory(root, create=False) or "")
    assert "directory" in (check_directory(root) or "")
    fresh = tmp_path / "fresh" / "spool"
    assert check_directory(fresh, create=False) is None and not fresh.exists()
    assert check_directory(fresh) is None and sorted(p.name for p in fresh.iterdir()) == [
        "logs", "metrics", "traces"]
    assert not list(fresh.rglob(".tmp-*"))


def test_configure_spools_into_the_directory_given_as_an_argument(tmp_path: Path) -> None:
    """configure(spool_dir=...) spools there, not into the temporary directory the exporter uses when no
    directory is set: the exporters read the settings configure() is putting in force."""
    script = textwrap.dedent(f"""
        import os
        import otel_perf
        from opentelemetry import trace
        handle = otel_perf.configure(spool_dir={str(tmp_path / "spool")!r})
        with trace.get_tracer("app").start_as_current_span("kept"):
            pass
        trace.get_tracer_provider().force_flush()
        os._exit(0)  # like a SIGKILL: leave what is spooled
    """)
    (tmp_path / "tmp").mkdir()
    env = clean_env(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9", OTEL_EXPORTER_OTLP_TIMEOUT="1",
                    TMPDIR=str(tmp_path / "tmp"))
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert list((tmp_path / "spool" / "traces").glob("*.otlp"))
    assert not os.listdir(tmp_path / "tmp")
