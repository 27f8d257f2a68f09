"""Fixtures of the worker-pool benchmarks (``test_workers.py``, ``test_workers_saturated.py``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace

from benchmarks.instrumentations.test_workers import _Env


@pytest.fixture(scope="module")
def env() -> Iterator[_Env]:
    """Providers, the instrumentor and a thread and a process pool, one set per benchmark module."""
    environment = _Env()
    yield environment
    environment.close()


@pytest.fixture
def under_parent(env: _Env) -> Iterator[None]:
    """Every case runs with a current parent span, as jobs submitted while serving a request do."""
    token = otel_context.attach(trace.set_span_in_context(env.parent))
    yield
    otel_context.detach(token)
