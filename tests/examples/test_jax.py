"""examples/jax, run as a user runs it: the real CLI in a subprocess, a real history.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "examples" / "jax"
POLLINATE = [sys.executable, "-m", "pollinate"]


def test_the_flax_mlp_learns_the_digits_in_five_rounds(tmp_path: Path) -> None:
    done = subprocess.run(
        [*POLLINATE, "run", str(APP), "--rounds", "5", "--clients", "5", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "120", "NO_COLOR": "1"},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    history = json.loads((tmp_path / "history.json").read_text())
    assert [r["round"] for r in history] == list(range(6))
    first, last = history[0], history[-1]
    assert last["replies"] == 5 and last["failures"] == 0
    # Measured: 0.196 before training, 0.929 after five rounds (the run is seeded).
    assert first["centralized"]["accuracy"] < 0.3
    assert last["centralized"]["accuracy"] >= 0.9
    assert "train_loss" in last["fit"] and "accuracy" in last["evaluate"]
