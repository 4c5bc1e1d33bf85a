# The documented entry points. Everything installs into .venv from pyproject.toml.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test bench lint typecheck install clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "omnisdk needs Python 3.11 or newer (set PYTHON=python3.X)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[server,dev]'
	@touch $(STAMP)

install: $(STAMP)

## demo: start the reference server on SQLite and walk the customer journey against it
demo: $(STAMP)
	$(BIN)/python examples/demo.py

## test: lint, type-check and run the whole test suite
test: lint typecheck
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

## bench: run the benchmarks and write docs/benchmarks.md
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[server,dev,bench]'
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
