# `make demo` and `make test` work on a fresh machine with Python 3.11 and make.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench proto clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.demo-deps: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[examples]'
	touch $@

$(VENV)/.test-deps: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

demo: $(VENV)/.demo-deps
	$(BIN)/pollinate run examples/quickstart-numpy
	$(BIN)/python examples/quickstart-numpy/centralized.py

lint: $(VENV)/.test-deps
	$(BIN)/ruff check src tests examples benchmarks
	$(BIN)/ruff format --check src tests examples benchmarks
	$(BIN)/mypy

test: $(VENV)/.test-deps lint
	$(BIN)/python -m pytest -q

bench: $(VENV)/.test-deps
	$(BIN)/python benchmarks/aggregate.py
	$(BIN)/python benchmarks/simulation.py

proto: $(VENV)/.test-deps
	cd src && ../$(BIN)/python -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. \
		--pyi_out=. pollinate/transport/fleet.proto

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
