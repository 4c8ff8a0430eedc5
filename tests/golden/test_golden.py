"""Seeded runs give the histories recorded before: refactors change no result.

The histories in this folder were written by ``record.py``; a change meant to alter results
re-records them and says so in CHANGELOG.md.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.golden.record import CASES, HERE, history


@pytest.mark.parametrize("name", sorted(CASES))
def test_history_is_the_recorded_one(name: str) -> None:
    recorded = json.loads((HERE / f"{name}.json").read_text())
    assert history(CASES[name]) == recorded


def test_every_case_is_recorded() -> None:
    assert sorted(p.stem for p in Path(HERE).glob("*.json")) == sorted(CASES)
