# `make demo` and `make test` work on a fresh machine with Python 3.11 and make.
# Both install from the committed lock (requirements/*.txt: exact versions and hashes), so a
# fresh clone gets exactly what CI tested; `make lock` refreshes the lock on purpose.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --quiet
# `make check` leaves these out; `make test` runs them too (markers set in tests/conftest.py)
SLOW := slow

.PHONY: demo test check lint bench proto lock clean system-deps image image-torch

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The lock pins pip and the build backend too; pollinate itself installs editable on top,
# built by the locked hatchling (--no-build-isolation) with no dependency left to resolve.
$(VENV)/.demo-deps: requirements/demo.txt pyproject.toml | $(BIN)/python
	$(PIP) --require-hashes -r requirements/demo.txt
	$(PIP) --no-deps --no-build-isolation -e .
	touch $@

$(VENV)/.test-deps: requirements/test.txt pyproject.toml | $(BIN)/python
	$(PIP) --require-hashes -r requirements/test.txt
	$(PIP) --no-deps --no-build-isolation -e .
	touch $@

demo: $(VENV)/.demo-deps
	$(BIN)/pollinate run examples/quickstart-numpy
	$(BIN)/python examples/quickstart-numpy/centralized.py

lint: $(VENV)/.test-deps
	$(BIN)/ruff check src tests examples benchmarks
	$(BIN)/ruff format --check src tests examples benchmarks
	$(BIN)/mypy

# tests/faults shape traffic with nftables inside network namespaces, tests/dashboard
# drive a headless Chromium through chromium-driver (Debian's), and tests/deployment/
# test_image.py builds and runs the image with podman (runc; debootstrap for its base);
# as root, install them
system-deps:
	@(command -v podman && command -v runc && command -v debootstrap) >/dev/null 2>&1 || \
		[ "$$(id -u)" != 0 ] || \
		apt-get install -y -qq podman buildah runc debootstrap >/dev/null 2>&1 || \
		(apt-get update -qq && apt-get install -y -qq podman buildah runc debootstrap >/dev/null)
	@command -v nft >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || \
		apt-get install -y -qq nftables >/dev/null 2>&1 || \
		(apt-get update -qq && apt-get install -y -qq nftables >/dev/null)
	@(command -v chromium && command -v chromedriver) >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || \
		apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1 || \
		(apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null)

# The inner loop: lint, types and every test outside the slow groups.
check: $(VENV)/.test-deps lint
	$(BIN)/python -m pytest -q -m "not $(SLOW)"

test: $(VENV)/.test-deps lint system-deps
	$(BIN)/python -m pytest -q

# The container image (deploy/Containerfile, docs/kubernetes.md), built once per content:
# deploy/image.sh prints the tag. The default base is the official Python image; where no
# registry is reachable, BASE=localhost/pollinate-base:bookworm builds one from Debian's
# packages first (deploy/base/debian-python.sh, as root).
BASE ?= docker.io/library/python:3.11-slim
image: | $(BIN)/python
	@BASE=$(BASE) deploy/image.sh runtime

image-torch: | $(BIN)/python
	@BASE=$(BASE) deploy/image.sh torch

bench: $(VENV)/.test-deps
	$(BIN)/python benchmarks/aggregate.py
	$(BIN)/python benchmarks/simulation.py
	$(BIN)/python benchmarks/robustness.py
	$(BIN)/python benchmarks/async.py

# The generated code is stamped with the generator's versions, and grpcio refuses to import
# code stamped newer than itself: generate with the oldest grpcio-tools pyproject allows
# (grpcio>=1.85.1), in a venv of its own, so every allowed grpcio reads it.
PROTO_VENV := .venv-proto
proto:
	[ -x $(PROTO_VENV)/bin/python ] || \
		($(PYTHON) -m venv $(PROTO_VENV) && $(PROTO_VENV)/bin/pip install --quiet grpcio-tools==1.85.1)
	cd src && ../$(PROTO_VENV)/bin/python -m grpc_tools.protoc -I. --python_out=. \
		--grpc_python_out=. --pyi_out=. pollinate/transport/fleet.proto

# Re-resolve every dependency to its newest allowed version. pip-compile runs in a venv of its
# own, with pip's configuration, so torch resolves to the CPU build (see README, "The lock").
LOCK_VENV := .venv-lock
LOCK := $(LOCK_VENV)/bin/pip-compile --quiet --upgrade --generate-hashes --allow-unsafe \
	--strip-extras --no-emit-index-url --no-emit-find-links
lock:
	[ -x $(LOCK_VENV)/bin/pip-compile ] || \
		($(PYTHON) -m venv $(LOCK_VENV) && $(LOCK_VENV)/bin/pip install --quiet pip-tools==7.6.2)
	$(LOCK) --extra test -o requirements/test.txt pyproject.toml requirements/build.in
	$(LOCK) --extra examples --constraint requirements/test.txt -o requirements/demo.txt \
		pyproject.toml requirements/build.in

clean:
	rm -rf $(VENV) $(LOCK_VENV) $(PROTO_VENV) .pytest_cache .mypy_cache .ruff_cache
