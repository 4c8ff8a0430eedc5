"""Flower apps, written as Flower's docs write them, run under pollinate with only their
``flwr`` imports changed, and match what Flower 1.41 itself made of them.

``apps/`` holds the apps as Flower runs them; ``recorded/`` what Flower recorded
(``record_flower.py``, run once by hand in a throwaway environment; Flower is not installed
here). Each test copies an app, changes its imports, and runs it through the real CLI.

Agreement is asked to a relative 1e-13. Both sides compute the same float64 arithmetic in a
different order (Flower sums the weighted models in reply-arrival order, pollinate in
blocks of float64), which moves a result by a few ulps: pollinate and Flower agree to
1.6e-16 here, and Flower's own two recordings of the same app differed by as much. Any real
difference (a sampled client more or less, a formula, a config key) moves the figures by
1e-3 or more.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.cli_runner import history_rounds, pollinate

HERE = Path(__file__).resolve().parent
TOLERANCE = 1e-13
FLOWER_IMPORT = re.compile(r"^from flwr(\.[a-z_.]+)? import ", flags=re.M)


def with_pollinate_imports(app: str, into: Path) -> Path:
    """A copy of ``apps/<app>`` whose ``from flwr... import`` lines import from
    ``pollinate.flower``: the only change a Flower app needs."""
    copy = into / app
    shutil.copytree(HERE / "apps" / app, copy)
    for path in copy.rglob("*.py"):
        source = path.read_text()
        changed = FLOWER_IMPORT.sub("from pollinate.flower import ", source)
        before, after = source.splitlines(), changed.splitlines()
        assert [b for b, a in zip(before, after, strict=True) if b != a] == [
            line for line in before if FLOWER_IMPORT.match(line)
        ], "only import lines change"
        path.write_text(changed)
    return copy


def recorded(app: str) -> dict[str, Any]:
    return json.loads((HERE / "recorded" / f"{app}.json").read_text())  # type: ignore[no-any-return]


def run_under_pollinate(app: str, tmp_path: Path) -> tuple[list[dict[str, Any]], Path]:
    """``pollinate run`` on the app with pollinate imports, in ``tmp_path/out``."""
    copy = with_pollinate_imports(app, tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    done = pollinate("run", copy, "--out", out, cwd=out)
    assert done.returncode == 0, done.stdout + done.stderr
    return history_rounds(out), out


def assert_close(flower: dict[str, float], ours: dict[str, Any], what: str) -> None:
    for key, value in flower.items():
        assert key in ours, f"{what}: pollinate has no {key!r}"
        assert ours[key] == pytest.approx(value, rel=TOLERANCE, abs=0), f"{what} {key}"


@pytest.mark.parametrize("app", ["sklearn-classic", "sklearn-message"])
def test_a_flower_app_matches_flower_round_by_round(app: str, tmp_path: Path) -> None:
    flower = recorded(app)
    rounds, _ = run_under_pollinate(app, tmp_path)
    ours = {r["round"]: r for r in rounds}
    assert len(flower["rounds"]) == flower["run-config"]["num-server-rounds"] == 3
    for theirs in flower["rounds"]:
        mine = ours[theirs["round"]]
        what = f"{app} round {theirs['round']}"
        assert mine["replies"] == theirs["replies"] == flower["num-supernodes"], what
        assert mine["failures"] == 0, what
        assert_close(theirs["fit"], mine["fit"], what + " fit")
        assert_close(theirs["evaluate"], mine["evaluate"], what + " evaluate")


def test_the_message_app_saves_flowers_final_model(tmp_path: Path) -> None:
    """``main`` goes on after ``strategy.start`` with its result: it saves the final model,
    which is Flower's to the tolerance."""
    _, out = run_under_pollinate("sklearn-message", tmp_path)
    saved = np.load(out / "final_model.npz")
    final = recorded("sklearn-message")["rounds"][-1]["arrays"]
    assert len(saved.files) == len(final) == 2
    for i, theirs in enumerate(map(np.array, final)):
        # relative to the array's scale: a coordinate near 0 has few ulps of its own
        scale = TOLERANCE * np.abs(theirs).max()
        np.testing.assert_allclose(saved[f"arr_{i}"], theirs, rtol=0, atol=scale)


def test_a_flower_apps_imports_are_all_it_changes(tmp_path: Path) -> None:
    copy = with_pollinate_imports("sklearn-classic", tmp_path)
    client = (copy / "sklearnclassic" / "client_app.py").read_text()
    assert "from pollinate.flower import ClientApp, NumPyClient" in client
    assert "flwr" not in client
