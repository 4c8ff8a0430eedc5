"""An asynchronous run (FedBuff) on a hub with real node processes: no step waits for a slow
node, and the hub checkpoints every step."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

from tests.deployment.apps import write_tiny_app
from tests.deployment.conftest import Deployment, wait_for

SLOW_SECONDS = 90.0  # the slow node's every fit; the run must end long before one does

# The tiny app's client, with FedBuff on the server: two updates per step.
ASYNC_SERVER = """\
import numpy as np

from pollinate import Arrays, FedBuff, ServerApp


def server_fn(run_config):
    strategy = FedBuff(
        buffer_size=2,
        on_fit_config_fn=lambda rnd: {"round": rnd},
        evaluate_fn=lambda rnd, arrays: (float(arrays["w"].sum()), {}),
    )
    return ServerApp(
        strategy,
        num_rounds=int(run_config["num-rounds"]),
        initial_arrays=Arrays({"w": np.zeros(4)}),
    )
"""


def test_steps_complete_without_waiting_for_the_slow_node(
    deployment: Deployment, tmp_path: Path
) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    app = write_tiny_app(
        tmp_path / "app",
        **{
            "num-rounds": 5,
            "fit-seconds": 0.2,
            "slow-partition": 3,
            "slow-round": 1,
            "slow-seconds": SLOW_SECONDS,
            "marker-dir": str(markers),
        },
    )
    (app / "tiny_app" / "server.py").write_text(ASYNC_SERVER)
    deployment.start_hub()
    deployment.start_nodes([app] * 4)

    started = time.monotonic()
    run = deployment.start_run(app)
    wait_for(lambda: (markers / "fit-p3-r1").exists(), "the slow node to start training")
    result = run.finish()
    took = time.monotonic() - started

    assert result.returncode == 0, result.stdout + result.stderr
    assert "finished" in result.stdout
    assert took < SLOW_SECONDS / 2, f"the run took {took:.0f}s: it waited for the slow node"
    history = result.history
    assert history is not None and [r["round"] for r in history] == [0, 1, 2, 3, 4, 5]
    for step in history[1:]:
        assert (step["replies"], step["failures"], step["applied"]) == (2, 0, True)
        # partitions 0-2 only: their mean partition is at most 2 (the slow one is 3)
        assert step["fit"]["partition"] <= 2.0
        assert step["fit"]["staleness"] >= 0.0
    # each step moved the model: partitions 0-2 add 1-3 to each of the 4 weights
    losses = [r["centralized"]["loss"] for r in history]
    assert all(later > earlier for earlier, later in itertools.pairwise(losses))
    # the slow node got one task and is still in it: it trained from version 0 only
    assert sorted(p.name for p in markers.glob("fit-p3-*")) == ["fit-p3-r1"]
    # with three fast nodes and two updates a step, a fast node's task was in flight across a
    # step's checkpoint, and its update still counted, as a stale one
    assert max(step["fit"]["staleness"] for step in history[1:]) > 0


def test_a_hub_killed_mid_run_resumes_the_asynchronous_run_from_its_last_step(
    deployment: Deployment, tmp_path: Path
) -> None:
    app = write_tiny_app(tmp_path / "app", **{"num-rounds": 10, "fit-seconds": 0.3})
    (app / "tiny_app" / "server.py").write_text(ASYNC_SERVER)
    deployment.start_hub()
    deployment.start_nodes([app] * 3)
    run = deployment.start_run(app)
    run.wait_for_output("round   3")  # the CLI's line for step 3

    [hub] = [p for p in deployment.processes if p.name.startswith("hub") and p.alive()]
    hub.kill()
    deployment.restart_hub()
    result = run.finish()

    assert result.returncode == 0, result.stdout + result.stderr
    assert "hub restarted (restart 1)" in result.stdout
    history = result.history
    assert history is not None and [r["round"] for r in history] == list(range(11))
    assert sum(r["resumed"] for r in history) == 1
    # no node was left pushing a reply to a task of before the crash: every step after the
    # restart has its two updates
    assert all(r["replies"] == 2 and r["applied"] for r in history[1:])
