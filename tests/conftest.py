"""Suite-wide settings, and the markers that split the suite into tiers.

The slow groups are marked by folder, and any test that starts real hub and node processes
(the `deployment` fixture) is marked `deployment` wherever it lives. Every group also carries
`slow`, so `pytest -m "not slow"` is the inner loop (`make check`) and `pytest -m faults` runs
one group alone. `make test` runs everything.
"""

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# gRPC's core logs each refused TLS handshake to stderr; the tests provoke many on purpose.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
# Hypothesis's per-example deadline (200 ms) and its too-slow health check time the machine,
# not the code: on a loaded machine they failed correct examples. Tests have no clock.
settings.register_profile("pollinate", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("pollinate")

TESTS = Path(__file__).resolve().parent
SLOW_GROUPS = ("deployment", "faults", "frameworks", "examples", "cli", "dashboard")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parts = item.path.relative_to(TESTS).parts if item.path.is_relative_to(TESTS) else ()
        groups = {part for part in parts[:1] if part in SLOW_GROUPS}
        if "deployment" in getattr(item, "fixturenames", ()):
            groups.add("deployment")
        for group in sorted(groups):
            item.add_marker(group)
        if groups:
            item.add_marker("slow")
