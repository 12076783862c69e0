# jobcast: every target sets up what it needs; `make help` lists them.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.DEFAULT_GOAL := help

.PHONY: help install run test test-unit lint typecheck check screenshot clean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "jobcast needs Python 3.11 or newer; set PYTHON=python3.11"; exit 1; }
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { scripts/system-deps python3-venv && $(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

install: $(STAMP) ## create .venv and install jobcast with its dev tools

run: $(STAMP) ## serve the demo on http://127.0.0.1:8000
	$(BIN)/jobcast serve

test: $(STAMP) ## run the whole test suite (installs what the tests need)
	@scripts/system-deps chromium redis-server
	$(BIN)/python -m pytest

test-unit: $(STAMP) ## run the unit tier only: seconds, and nothing to install
	$(BIN)/python -m pytest -m unit

lint: $(STAMP) ## ruff
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/ruff format --check src tests bench scripts

typecheck: $(STAMP) ## mypy --strict
	$(BIN)/mypy

check: lint typecheck test ## everything CI runs

.PHONY: bench
bench: $(STAMP) ## run the benchmarks (minutes; prints a table, writes docs/bench.png; BENCH_ARGS=--quick)
	@$(BIN)/python -c 'import matplotlib, tqdm' 2>/dev/null || $(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python -m bench $(BENCH_ARGS)

screenshot: $(STAMP) ## make docs/dashboard.png and docs/dashboard-phone.png from a real browser
	@scripts/system-deps chromium
	$(BIN)/python scripts/screenshot.py

clean: ## remove the virtualenv and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
