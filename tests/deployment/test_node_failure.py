"""A node that dies mid-round costs the round one reply, not the run."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.deployment.apps import write_tiny_app
from tests.deployment.conftest import Deployment, wait_for

# Short, so the test is quick; long enough that a busy CI runner's healthy nodes (which beat
# every HEARTBEAT_TIMEOUT / 6 seconds) are never taken for dead.
HEARTBEAT_TIMEOUT = 5.0


def test_a_node_killed_mid_fit_fails_its_task_and_the_run_finishes(
    deployment: Deployment, tmp_path: Path
) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    # partition 2 starts its round-2 fit (leaving a marker) and then takes far longer than
    # the test: it is killed while it trains
    app = write_tiny_app(
        tmp_path / "app",
        **{
            "num-rounds": 3,
            "slow-partition": 2,
            "slow-round": 2,
            "slow-seconds": 600.0,
            "marker-dir": str(markers),
        },
    )
    deployment.start_hub(heartbeat_timeout=HEARTBEAT_TIMEOUT)
    nodes = deployment.start_nodes([app] * 3)
    victim = nodes[2]

    run = deployment.start_run(app)
    wait_for(lambda: (markers / "fit-p2-r2").exists(), "partition 2 to start its round-2 fit")
    victim.process.kill()
    result = run.finish()

    assert result.returncode == 0, result.stdout + result.stderr
    assert "finished" in result.stdout
    history = result.history
    assert history is not None and [r["round"] for r in history] == [0, 1, 2, 3]
    assert (history[1]["replies"], history[1]["failures"]) == (3, 0)
    second = history[2]
    assert (second["replies"], second["failures"], second["applied"]) == (2, 1, True)
    [failure] = second["failed"]
    assert failure["node_id"] == victim.node_id and failure["stage"] == "fit"
    assert failure["reason"].startswith(f"node {victim.node_id} went silent")
    assert failure["kind"] == "lost"  # the hub lost it: not the client's error
    # the dead node is no longer sampled: round 3 is the two survivors, without failures
    assert (history[3]["replies"], history[3]["failures"]) == (2, 0)
    # the survivors' updates were applied: partitions 0 and 1 add 1 and 2, weighted 1 and 2
    survivors_mean = (1 * 1 + 2 * 2) / 3
    step = history[3]["centralized"]["loss"] - history[2]["centralized"]["loss"]
    assert step == pytest.approx(4 * survivors_mean)


def test_a_node_restarted_under_its_name_gets_the_tasks_of_its_id(
    deployment: Deployment, tmp_path: Path
) -> None:
    app = write_tiny_app(tmp_path / "app", **{"num-rounds": 1})
    deployment.start_hub()
    old = deployment.start_nodes([app, app])[1]
    # killed while its long-poll waits at the hub: that poll must not take the next task,
    # which would then go to a dead connection while the restarted node waits in vain
    old.process.kill()
    restarted = deployment.start_node(app, partition=1, partitions=2)
    assert restarted.node_id == old.node_id  # the same name, so the same id

    result = deployment.run(app)

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.history is not None
    assert (result.history[1]["replies"], result.history[1]["failures"]) == (2, 0)
