# Everything a newcomer needs: `make demo` and `make test` create .venv and install by themselves.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_TRACE := traces/steady-tdx.kvmt

.PHONY: demo test lint format bench golden clean venv warmup

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,dask,plot]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/kvmcache info $(DEMO_TRACE) --format table
	$(BIN)/kvmcache compare $(DEMO_TRACE) --format table

test: $(STAMP)
	$(BIN)/ruff check kvmcache tests benchmarks
	$(BIN)/ruff format --check kvmcache tests benchmarks
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check kvmcache tests benchmarks
	$(BIN)/ruff format --check kvmcache tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format kvmcache tests benchmarks
	$(BIN)/ruff check --fix kvmcache tests benchmarks

golden: $(STAMP)
	../shared/golden/check --kvmcache $(BIN)/kvmcache

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

warmup: $(STAMP)
	$(BIN)/kvmcache warmup

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
