"""Placement in simulation: virtual clients carry labels and resources in their node config,
so a placement can be tried before it is deployed."""

from __future__ import annotations

import numpy as np
import pytest

from pollinate import Arrays, Client, FedAvg, Sampling, ServerApp
from pollinate.client.client import Context
from pollinate.placement import SelectorError
from pollinate.records import Config, Metrics
from pollinate.simulation import SimulationGrid, run_simulation


def fleet(node: int) -> Config:
    """Even clients have a GPU; the first three are in the EU."""
    return {"gpus": 1 if node % 2 == 0 else 0, "region": "eu" if node < 3 else "us"}


class NeedsGpu(Client):
    def __init__(self, context: Context) -> None:
        self.context = context

    def fit(self, arrays: Arrays, config: Config) -> tuple[Arrays, int, Metrics]:
        if int(self.context.node_config["gpus"]) < 1:
            raise RuntimeError("no GPU here")
        return Arrays({"w": arrays["w"] + 1}), 1, {"node": float(self.context.node_id)}


def test_only_the_clients_whose_node_config_matches_are_offered() -> None:
    grid = SimulationGrid(NeedsGpu, 6, node_config_fn=fleet, select="gpus>=1")
    assert list(grid.nodes()) == [0, 2, 4]
    grid = SimulationGrid(NeedsGpu, 6, node_config_fn=fleet, select="gpus>=1,region in (eu)")
    assert list(grid.nodes()) == [0, 2]
    assert SimulationGrid(NeedsGpu, 6).nodes() == range(6)  # no selector: the whole range
    partition = SimulationGrid(NeedsGpu, 6, select="partition-id<2")  # set for every client
    assert list(partition.nodes()) == [0, 1]


def test_a_placed_simulation_runs_only_on_the_clients_that_fit() -> None:
    app = ServerApp(
        FedAvg(sampling=Sampling(fraction_evaluate=0)),
        num_rounds=2,
        initial_arrays=Arrays({"w": np.zeros(2)}),
    )
    result = run_simulation(app, NeedsGpu, 6, node_config_fn=fleet, select="gpus>=1")
    assert [(r.replies, r.failures) for r in result.history.rounds[1:]] == [(3, 0), (3, 0)]
    unplaced = run_simulation(app, NeedsGpu, 6, node_config_fn=fleet)
    assert [r.failures for r in unplaced.history.rounds[1:]] == [3, 3]  # the CPU-only ones


def test_a_bad_selector_fails_before_the_run() -> None:
    with pytest.raises(SelectorError, match="Hint: "):
        SimulationGrid(NeedsGpu, 6, select="gpus>>1")
