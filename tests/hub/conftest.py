"""Fixtures of the hub's tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pollinate.hub import fleet as fleet_module
from pollinate.hub.hub import Hub


class Clock:
    """Stands in for the ``time`` module inside the fleet: time moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(fleet_module, "time", clock)
    return clock


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    """A hub on a fresh data dir, in this process, with no ports open."""
    hub = Hub(tmp_path / "hub")
    yield hub
    hub.close()
    hub.state.close()
