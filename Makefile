# The two commands a new user needs (README): `make demo` and `make test`.
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# Tests use all cores by default; CI on 2 cores keeps this at 1 worker process.
PYTEST_ARGS ?=

.PHONY: setup demo test test-all lint check clean

$(BIN)/autopaint: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: the CPU wheel on this machine's disk (a newer one would pull CUDA builds)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(BIN)/autopaint

setup: $(BIN)/autopaint

demo: setup
	bash scripts/demo.sh

test: setup
	$(BIN)/pytest $(PYTEST_ARGS)

test-all: setup
	$(BIN)/pytest -m '' $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check shared services tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

check: lint test

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
