# `make demo` and `make test` work on a fresh machine with Python 3.11 and make.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench proto clean system-deps

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

# tests/faults shape traffic with nftables inside network namespaces; as root, install it
system-deps:
	@command -v nft >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || \
		apt-get install -y -qq nftables >/dev/null 2>&1 || \
		(apt-get update -qq && apt-get install -y -qq nftables >/dev/null)

test: $(VENV)/.test-deps lint system-deps
	$(BIN)/python -m pytest -q

bench: $(VENV)/.test-deps
	$(BIN)/python benchmarks/aggregate.py
	$(BIN)/python benchmarks/simulation.py
	$(BIN)/python benchmarks/robustness.py
	$(BIN)/python benchmarks/async.py

proto: $(VENV)/.test-deps
	cd src && ../$(BIN)/python -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. \
		--pyi_out=. pollinate/transport/fleet.proto

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
