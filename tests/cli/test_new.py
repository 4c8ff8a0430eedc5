"""``pollinate new`` writes an app that runs as generated, for every framework."""

from __future__ import annotations

from pathlib import Path

import pytest

from pollinate.cli.new import FRAMEWORKS
from tests.cli_runner import history_rounds, pollinate

# after two rounds of five clients each template scores 0.80-0.86 on the digits (measured)
FLOOR = 0.75


@pytest.mark.parametrize("framework", sorted(FRAMEWORKS))
def test_a_new_app_runs_as_generated(framework: str, tmp_path: Path) -> None:
    made = pollinate("new", f"my-{framework}-app", "--framework", framework, cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    app = tmp_path / f"my-{framework}-app"
    assert (app / "README.md").exists() and (app / f"my_{framework}_app" / "task.py").exists()
    done = pollinate("run", app.name, "--rounds", "2", "--out", "out", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    history = history_rounds(tmp_path / "out")
    assert [r["replies"] for r in history[1:]] == [5, 5]
    assert all(r["failures"] == 0 for r in history), [r["failed"] for r in history]
    assert "accuracy" in history[-1]["evaluate"]  # the clients' own evaluation works too
    assert history[-1]["centralized"]["accuracy"] >= FLOOR, history[-1]


def test_mistakes_are_refused_with_the_fix(tmp_path: Path) -> None:
    unknown = pollinate("new", "app", "--framework", "caffe", cwd=tmp_path)
    assert unknown.returncode != 0 and "numpy, pytorch" in unknown.stderr
    assert "Hint:" in unknown.stderr
    bad = pollinate("new", "9lives", cwd=tmp_path)
    assert bad.returncode != 0 and "cannot name an app" in bad.stderr
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    taken = pollinate("new", "taken", cwd=tmp_path)
    assert taken.returncode != 0 and "never overwrites" in taken.stderr
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"
