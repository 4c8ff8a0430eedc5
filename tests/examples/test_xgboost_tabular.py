"""examples/xgboost-tabular, run as a user runs it: the real CLI in a subprocess, a real
history.jsonl, in both modes."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli_runner import EXAMPLES, pollinate, run_app

APP = EXAMPLES / "xgboost-tabular"


@pytest.mark.parametrize(
    ("mode", "replies"),
    [("bagging", 3), ("cyclic", 1)],  # bagging: every client; cyclic: one client per round
)
def test_the_trees_learn_the_task_in_five_rounds(tmp_path: Path, mode: str, replies: int) -> None:
    history = run_app(APP, tmp_path, "--rounds", "5", "--clients", "3", "--config", f"mode={mode}")
    assert [r["round"] for r in history] == list(range(6))
    first, last = history[0], history[-1]
    assert [r["replies"] for r in history[1:]] == [replies] * 5
    assert all(r["failures"] == 0 for r in history)
    # Measured: AUC 0.500 on the empty model; after five rounds 0.889 (bagging, 3 clients x 1
    # tree a round) and 0.907 (cyclic, 5 trees a round); the run is deterministic.
    assert first["centralized"]["auc"] == 0.5
    assert last["centralized"]["auc"] >= 0.86
    assert last["centralized"]["accuracy"] >= 0.78
    assert {"auc", "accuracy"} <= set(last["evaluate"])
    assert "train_logloss" in last["fit"]


def test_an_unknown_mode_is_refused(tmp_path: Path) -> None:
    done = pollinate("run", APP, "--config", "mode=boosting", "--out", tmp_path)
    assert done.returncode == 2
    assert "mode=boosting: expected one of bagging, cyclic" in done.stdout + done.stderr
