"""Kill the hub at any moment: its runs resume from their last completed round, by themselves.

Fault: SIGKILL of the hub process (no chance to flush or say goodbye), then a new hub on the
same data dir and ports. Expectation: the run completes as if nothing happened: the same
final model as an uninterrupted run with the same seed, every round once in the history, the
restarts in the run's log, and no node's work lost or done twice.
"""

from __future__ import annotations

import random
import re
import sqlite3
import time
from pathlib import Path

import numpy as np

from pollinate.loop import checkpoint
from tests.deployment.apps import write_tiny_app
from tests.deployment.conftest import QUICKSTART, Deployment, wait_for

ROUNDS = 10
TOLERANCE = 1e-6
# more local work than the demo's default, so that a round lasts long enough (~0.3 s here)
# for the kills to land inside the run rather than after its end
ARGS = ("--rounds", str(ROUNDS), "--seed", "7", "--config", "local-epochs=100")


def progress(deployment: Deployment, run_id: str) -> tuple[str, int]:
    """(status, last completed round) of a run, read from the hub's database as it is."""
    db = sqlite3.connect(f"file:{deployment.directory / 'hub-data' / 'hub.db'}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT status, round FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    finally:
        db.close()
    return (str(row[0]), int(row[1])) if row else ("", -1)


def final_arrays(deployment: Deployment, run_id: str) -> dict[str, np.ndarray]:
    """The run's final global model, from the checkpoint the hub keeps after the run."""
    path = deployment.directory / "hub-data" / "runs" / run_id / f"checkpoint-{ROUNDS:06d}.pln"
    return dict(checkpoint.decode(path.read_bytes()).arrays.items())


def test_three_sigkills_of_the_hub_leave_the_final_model_of_an_uninterrupted_run(
    deployment: Deployment,
) -> None:
    deployment.start_hub()
    deployment.start_nodes([QUICKSTART] * 3)
    reference = deployment.run(QUICKSTART, *ARGS)
    assert reference.returncode == 0, reference.stdout + reference.stderr

    run = deployment.start_run(QUICKSTART, *ARGS)
    run.wait_for_output("submitted")
    found = re.search(r"run (\w+) submitted", run.process.stdout)
    assert found
    run_id = found.group(1)
    jitter = random.Random(0)
    outages = []
    for after_round in (2, 5, 8):
        wait_for(lambda r=after_round: progress(deployment, run_id)[1] >= r, f"round {after_round}")
        time.sleep(jitter.uniform(0.0, 0.3))  # somewhere in the next round
        _hub(deployment).kill()
        assert progress(deployment, run_id)[0] == "running", "the kill came after the run"
        killed = time.monotonic()
        deployment.restart_hub()
        outages.append(time.monotonic() - killed)
    result = run.finish()

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.history is not None
    assert [r["round"] for r in result.history] == list(range(ROUNDS + 1))
    assert sum(r["resumed"] for r in result.history) == 3
    assert result.stdout.count("hub restarted (restart") == 3
    mine, theirs = (
        final_arrays(deployment, result.run_id),
        final_arrays(deployment, reference.run_id),
    )
    assert mine.keys() == theirs.keys()
    difference = max(float(np.max(np.abs(mine[k] - theirs[k]))) for k in mine)
    assert difference <= TOLERANCE
    accuracy = result.history[-1]["centralized"]["accuracy"]
    assert accuracy == reference.history[-1]["centralized"]["accuracy"]  # type: ignore[index]
    print(
        f"measured: 3 SIGKILLs, hub back on its ports in "
        f"{', '.join(f'{s:.1f}' for s in outages)} s; largest difference to the "
        f"uninterrupted model {difference:.1e}; final accuracy {accuracy:.3f}"
    )


def test_a_reply_pushed_while_the_hub_is_down_is_accepted_once_and_no_fit_runs_twice(
    deployment: Deployment, tmp_path: Path
) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    # partition 2 trains round 2 for 6 s; the hub is killed while it does, after partitions
    # 0 and 1 delivered their round-2 replies
    app = write_tiny_app(
        tmp_path / "app",
        **{
            "num-rounds": 3,
            "slow-partition": 2,
            "slow-round": 2,
            "slow-seconds": 6.0,
            "marker-dir": str(markers),
        },
    )
    deployment.start_hub()
    deployment.start_nodes([app] * 3)
    run = deployment.start_run(app)
    replies = deployment.directory / "hub-data" / "runs"
    wait_for(lambda: (markers / "fit-p2-r2").exists(), "partition 2 to start its round-2 fit")
    wait_for(lambda: len(list(replies.glob("*/replies/*.pln"))) == 2, "two recorded replies")
    _hub(deployment).kill()
    deployment.restart_hub()
    result = run.finish()

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.history is not None
    second = result.history[2]
    assert (second["replies"], second["failures"], second["resumed"]) == (3, 0, True)
    fits = {p.name: p.read_text().count("fit") for p in markers.iterdir()}
    assert fits == {f"fit-p{p}-r{r}": 1 for p in range(3) for r in (1, 2, 3)}
    # every round moved the model by the same weighted mean: (1*1 + 2*2 + 3*3) / 6 per entry
    losses = [r["centralized"]["loss"] for r in result.history]
    assert np.allclose(np.diff(losses), 4 * 14 / 6)
    log = deployment.cli("log", result.run_id, "--hub", deployment.control)
    assert f"hub restarted (restart 1): run {result.run_id} resumes after round 1" in log.stdout


def _hub(deployment: Deployment):  # type: ignore[no-untyped-def]
    """The live hub process."""
    [hub] = [p for p in deployment.processes if p.name.startswith("hub") and p.alive()]
    return hub
