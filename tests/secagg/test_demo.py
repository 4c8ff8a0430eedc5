"""The demo trains as well with secure aggregation on: the hub sums masked updates only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples" / "quickstart-numpy"


def final_accuracy(tmp: Path, *config: str) -> tuple[float, list[dict]]:
    args = [sys.executable, "-m", "pollinate", "run", str(DEMO), "--out", str(tmp)]
    for item in config:
        args += ["--config", item]
    env = {**os.environ, "COLUMNS": "120", "NO_COLOR": "1"}
    done = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    history = json.loads((tmp / "history.json").read_text())
    return float(history[-1]["centralized"]["accuracy"]), history


def test_the_demo_with_secure_aggregation_is_within_one_point_of_plain(tmp_path: Path) -> None:
    plain, _ = final_accuracy(tmp_path / "plain")
    secure, history = final_accuracy(tmp_path / "secure", "secure-aggregation=true")
    assert all(r["replies"] == 20 and r["aborted"] is None for r in history[1:])
    assert all(r["fit"]["secagg_clipped"] == 0 for r in history[1:])  # nothing was clipped
    assert abs(secure - plain) <= 0.01, (plain, secure)
    assert secure >= 0.90
