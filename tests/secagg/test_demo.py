"""The demo trains as well with secure aggregation on: the hub sums masked updates only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.cli_runner import EXAMPLES, run_app

pytestmark = pytest.mark.slow  # two full demo runs, as `pollinate run` subprocesses

DEMO = EXAMPLES / "quickstart-numpy"


def final_accuracy(tmp: Path, *config: str) -> tuple[float, list[dict[str, Any]]]:
    history = run_app(DEMO, tmp, *(arg for item in config for arg in ("--config", item)))
    return float(history[-1]["centralized"]["accuracy"]), history


def test_the_demo_with_secure_aggregation_is_within_one_point_of_plain(tmp_path: Path) -> None:
    plain, _ = final_accuracy(tmp_path / "plain")
    secure, history = final_accuracy(tmp_path / "secure", "secure-aggregation=true")
    assert all(r["replies"] == 20 and r["aborted"] is None for r in history[1:])
    assert all(r["fit"]["secagg_clipped"] == 0 for r in history[1:])  # nothing was clipped
    assert abs(secure - plain) <= 0.01, (plain, secure)
    assert secure >= 0.90
