# The README's commands. `make demo` runs the product, `make test` the whole suite;
# both install what they need on a fresh Debian machine first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DEMO_ARGS ?=

.PHONY: demo test setup system-deps lint typecheck bench clean

demo: setup
	$(BIN)/dalaba demo $(DEMO_ARGS)

test: setup
	$(BIN)/ruff check .
	$(BIN)/mypy dalaba dalaba_ops controller edge_agent firmware_sim
	$(BIN)/pytest

setup: system-deps $(VENV)/.installed

system-deps:
	@scripts/ensure-system-deps.sh

# Pinned: pyproject.toml pins the direct dependencies, requirements.lock everything.
$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c requirements.lock -e '.[dev]'
	touch $@

lint:
	$(BIN)/ruff check .

typecheck:
	$(BIN)/mypy dalaba dalaba_ops controller edge_agent firmware_sim

bench: setup
	$(BIN)/python bench/bench_spine.py

clean:
	rm -rf $(VENV) demo-data .pytest_cache
