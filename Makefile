# `make demo` and `make test` set up everything they need on a fresh machine: a .venv with otel-perf and
# its test tools, and (as root on Debian) the Debian packages the real-server tests use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo test unit bench lint setup debian-packages clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test,lint]'
	touch $(STAMP)

setup: $(STAMP)

debian-packages:
	@scripts/install-debian-packages

demo: $(STAMP)
	$(BIN)/otel-perf demo

test: $(STAMP) debian-packages
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

unit: $(STAMP)
	$(BIN)/python -m pytest -q -m "not e2e" $(PYTEST_ARGS)

# Benchmarks: timed runs, RESULTS.md, and the budget check (make test only smoke-runs each case once).
bench: $(STAMP)
	$(BIN)/python -m pytest benchmarks --benchmark-enable --benchmark-only --benchmark-min-rounds=5 \
		--benchmark-json=benchmarks/results.json -q $(PYTEST_ARGS)
	$(BIN)/python benchmarks/results.py benchmarks/results.json --check

lint: $(STAMP)
	$(BIN)/ruff check otel_perf tests benchmarks scripts
	$(BIN)/mypy

clean:
	rm -rf $(VENV) otel-perf-data .pytest_cache .mypy_cache .ruff_cache
