"""PerfInstrumentor keeps opentelemetry-instrumentation's BaseInstrumentor protocol without importing it."""

from __future__ import annotations

import json
import logging
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest

from otel_perf.instrumentations import PerfInstrumentor
from otel_perf.instrumentations.parsers import ParserInstrumentor
from tests.conftest import BIN, clean_env


def test_configure_imports_neither_base_instrumentor_nor_packaging(tmp_path: Path) -> None:
    """``configure()`` instruments without importing BaseInstrumentor's module or ``packaging`` (about 40 ms
    of every configure() here); once the program imports BaseInstrumentor, otel-perf's instrumentors are
    instances of it, and the launcher's keywords are accepted."""
    app = tmp_path / "app.py"
    app.write_text(textwrap.dedent("""
        import json, sys
        import otel_perf
        handle = otel_perf.configure()
        before = sorted(m for m in sys.modules
                        if m.startswith(("packaging", "opentelemetry.instrumentation.instrumentor")))
        from opentelemetry.instrumentation.instrumentor import BaseInstrumentor
        from otel_perf.instrumentations.workers import WorkerPoolInstrumentor
        pools = WorkerPoolInstrumentor()
        print(json.dumps({"before": before, "instance": isinstance(pools, BaseInstrumentor),
                          "subclass": issubclass(WorkerPoolInstrumentor, BaseInstrumentor),
                          "instrumented": pools.is_instrumented_by_opentelemetry,
                          "in_handle": pools in handle.instrumentors}))
        handle.shutdown()
    """))
    completed = subprocess.run([str(BIN / "python"), str(app)], env=clean_env(OTEL_TRACES_EXPORTER="none",
                               OTEL_METRICS_EXPORTER="none", OTEL_LOGS_EXPORTER="none"), cwd=tmp_path,
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout) == {"before": [], "instance": True, "subclass": True, "instrumented": True,
                                            "in_handle": True}


def test_base_instrumentor_is_known_when_already_imported() -> None:
    from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

    assert isinstance(ParserInstrumentor(), BaseInstrumentor)


class _Counting(PerfInstrumentor):
    started = 0
    stopped = 0

    def _start(self, **kwargs: Any) -> None:
        type(self).started += 1

    def _stop(self) -> None:
        type(self).stopped += 1


def test_the_protocol_is_base_instrumentors(caplog: pytest.LogCaptureFixture) -> None:
    """One instance per class; instrument() twice and uninstrument() twice each act once and warn as
    BaseInstrumentor does (its logger); the launcher's dependency-check keywords are accepted."""
    first, second = _Counting(), _Counting()
    assert first is second
    assert not first.is_instrumented_by_opentelemetry
    assert first.instrumentation_dependencies() == ()
    with caplog.at_level(logging.WARNING, logger="opentelemetry.instrumentation.instrumentor"):
        first.instrument(skip_dep_check=True, raise_exception_on_conflict=True)
        second.instrument()
        assert (_Counting.started, second.is_instrumented_by_opentelemetry) == (1, True)
        second.uninstrument()
        first.uninstrument()
    assert (_Counting.stopped, first.is_instrumented_by_opentelemetry) == (1, False)
    assert [r.getMessage() for r in caplog.records] == ["Attempting to instrument while already instrumented",
                                                        "Attempting to uninstrument while already uninstrumented"]
