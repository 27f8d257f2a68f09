"""Out-of-range settings in real programs: reported once, clamped, and everything still starts."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import BIN, clean_env

pytestmark = pytest.mark.e2e

SELECTORS = {"OTEL_PYTHON_DISTRO": "otel_perf"}


def test_tracemalloc_beyond_its_limit_is_clamped_and_the_debug_server_starts(tmp_path: Path) -> None:
    """OTEL_PERF_TRACEMALLOC=70000 under the launcher: one warning naming the value used, tracemalloc runs
    with its maximum of 65535 frames, and the debug server starts (no internal error at start-up)."""
    (tmp_path / "app.py").write_text(textwrap.dedent("""
        import tracemalloc
        from otel_perf.profiling import server
        print("frames=%d tracing=%s" % (tracemalloc.get_traceback_limit(), tracemalloc.is_tracing()))
        print("debug-server=%s" % (server._startup_server is not None))
    """))
    env = clean_env(**SELECTORS, OTEL_PERF_TRACEMALLOC="70000", OTEL_PERF_DEBUG_ADDR="127.0.0.1:0",
                    OTEL_TRACES_EXPORTER="none", OTEL_METRICS_EXPORTER="none", OTEL_LOGS_EXPORTER="none")
    out = subprocess.run([str(BIN / "opentelemetry-instrument"), sys.executable, "app.py"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "frames=65535 tracing=True" in out.stdout and "debug-server=True" in out.stdout
    warnings = [line for line in out.stderr.splitlines() if "OTEL_PERF_TRACEMALLOC" in line]
    assert len(warnings) == 1 and "'70000'; using 65535 instead" in warnings[0], out.stderr
    assert "internal error" not in out.stderr


@pytest.mark.parametrize(("raw", "used"), [("1e10", 3600.0), ("1e-9", 0.1)])
def test_memory_check_interval_out_of_range_keeps_the_monitor_running(
        tmp_path: Path, raw: str, used: float) -> None:
    """OTEL_PERF_MEMORY_CHECK_INTERVAL=1e10 no longer kills the memory monitor thread (OverflowError), and
    1e-9 no longer busy-loops it: the interval in force is the nearest end of the range."""
    script = textwrap.dedent("""
        import threading, time
        import otel_perf
        from otel_perf._config import get_settings
        handle = otel_perf.configure(output_dir={!r})
        time.sleep(0.5)
        alive = any(t.name == "otel-perf-memory" and t.is_alive() for t in threading.enumerate())
        print("interval=%r monitor-alive=%s" % (get_settings().memory_check_interval, alive))
        handle.shutdown()
    """.format(str(tmp_path / "out")))
    env = clean_env(OTEL_PERF_MEMORY_CHECK_INTERVAL=raw)
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"interval={used!r} monitor-alive=True" in out.stdout
    assert "Traceback" not in out.stderr and "OverflowError" not in out.stderr
    assert len([line for line in out.stderr.splitlines() if "OTEL_PERF_MEMORY_CHECK_INTERVAL" in line]) == 1
