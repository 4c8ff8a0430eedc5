"""Fixtures of the hub's tests."""

from __future__ import annotations

import pytest

from pollinate.hub import fleet as fleet_module


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
