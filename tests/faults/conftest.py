"""Fault tests run real hubs and nodes, as the deployment tests do, with their fixtures."""

from tests.deployment.conftest import deployment, pytest_runtest_makereport

__all__ = ["deployment", "pytest_runtest_makereport"]
