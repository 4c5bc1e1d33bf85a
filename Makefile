# The documented entry points. Everything installs into .venv from pyproject.toml.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test bench bench-scale lint typecheck install clean pos-catalogue pos-screenshots docs docs-build

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "omnisdk needs Python 3.11 or newer (set PYTHON=python3.X)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[server,analytics,dev,docs]'
	@touch $(STAMP)

install: $(STAMP)

## demo: start the reference server on SQLite and walk the customer journey against it
demo: $(STAMP)
	$(BIN)/python examples/demo.py

## test: lint, type-check, build the docs site (strict) and run the whole test suite
## (on TEST_WORKERS processes, each taking whole files; TEST_WORKERS=0 runs it in this one)
TEST_WORKERS ?= 2
test: lint typecheck docs-build
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --max-worker-restart=0

## docs: serve the documentation site at http://127.0.0.1:8001 (rebuilds on change)
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --dev-addr 127.0.0.1:8001

## docs-build: build the documentation site into .site/; a broken link or reference fails it
docs-build: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

## bench: run the benchmarks and write docs/benchmarks.md
bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[server,analytics,dev,bench]'
	$(BIN)/python -m bench.run

## bench-scale: load shops of 10 k and 1 M customers on PostgreSQL and write docs/scale.md (minutes; not in make test)
##   CUSTOMERS="10000 1000000 10000000" for other sizes; ARGS=--keep keeps each loaded shop,
##   ARGS=--reuse measures the kept ones again without loading (docs/scaling.md)
bench-scale: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[server,dev,bench]'
	$(BIN)/python -m bench.scale.run --customers $(or $(CUSTOMERS),10000 1000000) --write $(ARGS)

## pos-catalogue: extract the return station's messages and merge them into each language's .po
POS := server_stub/pos
pos-catalogue: $(STAMP)
	cd $(POS) && ../../$(BIN)/pybabel extract -F babel.cfg -k words -k N_ -k UnreadablePhoto \
		--no-location --omit-header --sort-output -o locale/pos.pot .
	$(BIN)/pybabel update -D pos -i $(POS)/locale/pos.pot -d $(POS)/locale --ignore-obsolete

## pos-screenshots: the return station's pages in English and Polish, for docs/pos.md
pos-screenshots: $(STAMP)
	OMNISDK_POS_SCREENSHOTS=docs/images $(BIN)/python -m pytest -q tests/browser/test_pos_languages.py \
		tests/browser/test_pos_station.py -k 'languages or polish or english or offline_return'

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis .site
