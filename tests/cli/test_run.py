"""``pollinate run`` as a user runs it: a real subprocess, real output, real files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples" / "quickstart-numpy"
POLLINATE = [sys.executable, "-m", "pollinate"]


def pollinate(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "120", "NO_COLOR": "1"}
    return subprocess.run(
        [*POLLINATE, *args], capture_output=True, text=True, timeout=300, env=env, check=False
    )


def test_the_demo_reaches_ninety_percent_and_writes_history(tmp_path: Path) -> None:
    done = pollinate("run", str(DEMO), "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    history = json.loads((tmp_path / "history.json").read_text())
    assert [r["round"] for r in history] == list(range(21))
    last = history[-1]
    assert set(last) >= {
        "round",
        "fit",
        "evaluate",
        "centralized",
        "replies",
        "failures",
        "seconds",
    }
    assert last["replies"] == 20 and last["failures"] == 0
    assert last["centralized"]["accuracy"] >= 0.90
    assert "loss" in last["evaluate"] and "accuracy" in last["evaluate"]
    assert "train_accuracy" in last["fit"]
    assert "run summary" in done.stdout and "round  20" in done.stdout


def test_overrides_change_the_run(tmp_path: Path) -> None:
    done = pollinate(
        "run",
        str(DEMO),
        "--rounds",
        "2",
        "--clients",
        "5",
        "--seed",
        "3",
        "--config",
        "local-epochs=1",
        "--out",
        str(tmp_path),
    )
    assert done.returncode == 0, done.stderr
    history = json.loads((tmp_path / "history.json").read_text())
    assert len(history) == 3 and history[-1]["replies"] == 5


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--config", "learning_rate=1"], "Did you mean 'learning-rate'"),
        (["--config", "learning-rate"], "is not KEY=VALUE"),
        (["--clients", "1"], "needs 2 clients for fit but only 1"),
    ],
)
def test_user_errors_get_a_message_and_no_traceback(args: list[str], message: str) -> None:
    done = pollinate("run", str(DEMO), "--rounds", "1", *args)
    assert done.returncode == 2
    assert message in " ".join(done.stderr.split())
    assert "Traceback" not in done.stderr + done.stdout


def test_a_missing_app_directory_is_explained(tmp_path: Path) -> None:
    done = pollinate("run", str(tmp_path / "nowhere"))
    assert done.returncode == 2
    assert "no pyproject.toml" in done.stderr and "Traceback" not in done.stderr


def test_help_explains_every_option() -> None:
    done = pollinate("run", "--help")
    assert done.returncode == 0
    for option in ("--rounds", "--clients", "--seed", "--config", "--out", "--concurrency"):
        assert option in done.stdout
