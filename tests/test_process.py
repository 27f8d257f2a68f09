"""The process's role, the active handle and the worker bootstrap, which instrumentations read from the core."""

from __future__ import annotations

import pickle
import subprocess
import textwrap

import pytest

from otel_perf import _process
from otel_perf._config import load_settings
from otel_perf._sdk import ConfigSnapshot
from tests.conftest import PYTHON, clean_env

WORKER = textwrap.dedent("""
    import sys
    from otel_perf import _process
    from otel_perf.instrumentations import _workers_trampoline  # what a pool worker imports first
    before = ("otel_perf._sdk" in sys.modules, _process._worker_bootstrap is not None)
    _process.bootstrap_worker(bytes.fromhex(sys.argv[1]))
    handle = _process.current_handle()
    print(before, handle is not None and handle.service_name)
    handle.shutdown()
""")


def test_a_worker_reaches_the_set_up_layer_through_the_snapshot_and_its_hook() -> None:
    """In a fresh worker, the instrumentation loaded no set-up layer and no hook; unpickling the parent's
    snapshot imports the set-up layer, which registers the bootstrap, and the worker is configured."""
    snapshot = ConfigSnapshot(load_settings({}), "from-parent", {},
                              {"OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none",
                               "OTEL_LOGS_EXPORTER": "none"})
    done = subprocess.run([PYTHON, "-c", WORKER, pickle.dumps(snapshot).hex()], env=clean_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[0] == "(False, False) from-parent"
    assert done.stderr == ""


def test_bootstrap_without_a_registered_hook_logs_once_and_runs_on(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Should no set-up layer register the bootstrap, the worker runs on without an SDK of its own."""
    monkeypatch.setattr(_process, "_worker_bootstrap", None)
    monkeypatch.setattr(_process, "_handle", None)
    data = pickle.dumps({"not": "a snapshot"})
    _process.bootstrap_worker(data)
    _process.bootstrap_worker(data)
    assert _process.current_handle() is None
    assert len([r for r in caplog.records if "no worker bootstrap" in r.getMessage()]) == 1


def test_bootstrap_leaves_a_configured_process_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker that is configured already (its own configure()) keeps its handle."""
    calls: list[object] = []
    monkeypatch.setattr(_process, "_worker_bootstrap", calls.append)
    monkeypatch.setattr(_process, "_handle", "configured")
    _process.bootstrap_worker(pickle.dumps("snapshot"))
    assert calls == [] and _process.current_handle() == "configured"
