"""run_simulation: the one call that runs an app on virtual clients."""

from __future__ import annotations

from pollinate.client.client import Client, ClientFn  # noqa: F401 (doctest)
from pollinate.loop.app import ServerApp
from pollinate.loop.run import EventHandler, RunResult, run
from pollinate.records import Config
from pollinate.simulation.adversary import Adversaries
from pollinate.simulation.grid import NodeConfigFn, SimulationGrid
from pollinate.simulation.speed import ClientSpeed, Stragglers


def run_simulation(
    server_app: ServerApp,
    client_fn: ClientFn,
    num_clients: int,
    *,
    seed: int = 0,
    concurrency: int | None = None,
    run_config: Config | None = None,
    node_config_fn: NodeConfigFn | None = None,
    on_event: EventHandler | None = None,
    adversaries: Adversaries | None = None,
    client_speed: Stragglers | ClientSpeed | None = None,
    select: str = "",
) -> RunResult:
    """Run ``server_app`` with ``num_clients`` virtual clients made by ``client_fn``.

    ``adversaries=Adversaries(0.2, "sign-flip")`` makes a fifth of them attack;
    ``client_speed=Stragglers(0.2, slowdown=10.0)`` makes a fifth of them ten times slower.
    ``select="gpus>=1"`` runs only on the clients whose node config (``node_config_fn``)
    matches, as a hub would place the run (docs/placement.md).

    >>> from pollinate import FedAvg, Sampling, ServerApp, Arrays
    >>> import numpy as np
    >>> class Nudge(Client):
    ...     def fit(self, arrays, config):
    ...         return Arrays({"w": arrays["w"] + 1}), 1, {}
    >>> app = ServerApp(FedAvg(sampling=Sampling(fraction_evaluate=0)), num_rounds=2,
    ...                 initial_arrays=Arrays({"w": np.zeros(2)}))
    >>> run_simulation(app, lambda ctx: Nudge(), num_clients=3).arrays["w"].tolist()
    [2.0, 2.0]
    """
    grid = SimulationGrid(
        client_fn,
        num_clients,
        concurrency=concurrency,
        run_config=run_config,
        node_config_fn=node_config_fn,
        adversaries=adversaries,
        client_speed=client_speed,
        select=select,
    )
    try:
        return run(grid, server_app, seed=seed, run_id="simulation", on_event=on_event)
    finally:
        grid.close()
