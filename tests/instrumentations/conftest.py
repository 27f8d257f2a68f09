"""Fixtures of the worker-pool tests (``test_workers*.py``). The other instrumentations' test modules
define their own ``instrument``/``instrumented``, which take precedence there."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from otel_perf._config import load_settings
from otel_perf.instrumentations.workers import WorkerPoolInstrumentor


@pytest.fixture
def instrument(tracer_provider: Any, meter_provider: Any) -> Iterator[Any]:
    """Instrument pools with in-memory providers; returns a function taking settings; always uninstruments."""
    instrumentor = WorkerPoolInstrumentor()

    def start(**settings: Any) -> WorkerPoolInstrumentor:
        instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider,
                                settings=load_settings(**settings))
        return instrumentor

    yield start
    instrumentor.uninstrument()


@pytest.fixture
def instrumented(instrument: Any) -> WorkerPoolInstrumentor:
    return instrument()  # type: ignore[no-any-return]
