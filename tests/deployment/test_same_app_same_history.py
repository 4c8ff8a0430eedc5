"""Write once, run anywhere: the same app, seed and clients give the same history on a hub's
nodes as in simulation."""

from __future__ import annotations

from typing import Any

import pytest

from tests.cli_runner import history_rounds
from tests.deployment.conftest import QUICKSTART, Deployment

ROUNDS = "5"
TOLERANCE = 1e-5  # replies arrive in another order, so float sums may differ in the last bits


def close(deployed: dict[str, Any], simulated: dict[str, Any]) -> None:
    assert deployed.keys() == simulated.keys()
    for name, value in simulated.items():
        assert deployed[name] == pytest.approx(value, abs=TOLERANCE), name


def test_three_nodes_train_the_quickstart_as_the_simulation_does(deployment: Deployment) -> None:
    deployment.start_hub()
    # The hub numbers nodes in order of first contact, and three nodes starting at once race.
    # Claiming the ids in partition order makes node k + 1 serve partition k. Federated
    # evaluation samples positions in the sorted list of node ids with an RNG seeded by
    # (seed, round), so with ids 1, 2, 3 standing for simulation's clients 0, 1, 2 the same
    # partitions evaluate in every round, and the federated evaluation is comparable too.
    # (Without it, the same positions would name other partitions.)
    names = [f"partition-{p}" for p in range(3)]
    assert deployment.reserve_node_ids(names) == [1, 2, 3]
    nodes = deployment.start_nodes([QUICKSTART] * 3)
    assert [node.node_id for node in nodes] == [1, 2, 3]

    deployed = deployment.run(QUICKSTART, "--rounds", ROUNDS, "--seed", "0")
    simulation_out = deployment.directory / "simulation"
    simulated = deployment.cli(
        "run", QUICKSTART, "--clients", "3", "--rounds", ROUNDS, "--seed", "0", "--out",
        simulation_out,
    )  # fmt: skip

    assert deployed.returncode == 0, deployed.stderr
    assert simulated.returncode == 0, simulated.stderr
    assert deployed.history is not None
    simulation = history_rounds(simulation_out)
    assert [r["round"] for r in deployed.history] == [r["round"] for r in simulation]
    assert len(simulation) == int(ROUNDS) + 1
    for mine, theirs in zip(deployed.history, simulation, strict=True):
        assert (mine["replies"], mine["failures"], mine["applied"]) == (
            theirs["replies"],
            theirs["failures"],
            theirs["applied"],
        )
        assert mine["failed"] == theirs["failed"] == []
        close(mine["centralized"], theirs["centralized"])
        close(mine["fit"], theirs["fit"])
        close(mine["evaluate"], theirs["evaluate"])
    assert all(r["replies"] == 3 and r["evaluate"] for r in deployed.history[1:])
    # measured: 0.909 after five rounds on three clients
    assert deployed.history[-1]["centralized"]["accuracy"] >= 0.85
