"""examples/sklearn-breast-cancer as a user runs it: five hospitals, logistic regression."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.cli_runner import EXAMPLES, run_app

APP = EXAMPLES / "sklearn-breast-cancer"


def test_five_hospitals_reach_the_pooled_models_accuracy(tmp_path: Path) -> None:
    history = run_app(APP, tmp_path, "--rounds", "4", "--clients", "5")
    assert [r["round"] for r in history] == [0, 1, 2, 3, 4]
    assert all(r["replies"] == 5 and r["failures"] == 0 for r in history[1:])
    # README: 0.986 after 4 rounds, as the model trained on all patients pooled (0.986).
    assert history[-1]["centralized"]["accuracy"] >= 0.97
    assert history[-1]["evaluate"]["accuracy"] >= 0.95
    assert "train_accuracy" in history[-1]["fit"]


def test_the_references_print_pooled_and_per_hospital_accuracy() -> None:
    done = subprocess.run(
        [sys.executable, str(APP / "centralized.py")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "pooled: test accuracy 0.98" in done.stdout
    assert done.stdout.count("hospital ") == 5
