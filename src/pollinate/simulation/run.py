"""run_simulation: the one call that runs an app on virtual clients."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from pollinate.artifacts import MODEL_FILE, save_arrays
from pollinate.client.client import Client, ClientFn  # noqa: F401 (doctest)
from pollinate.loop.app import ServerApp
from pollinate.loop.events import Event
from pollinate.loop.history import History
from pollinate.loop.history_writer import HistoryWriter
from pollinate.loop.run import EventHandler, RunResult, run
from pollinate.records import Config
from pollinate.simulation.adversary import Adversaries
from pollinate.simulation.grid import NodeConfigFn, SimulationGrid
from pollinate.simulation.ray_engine import RayEngine, RayGrid
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
    out: str | Path | None = None,
    engine: RayEngine | None = None,
) -> RunResult:
    """Run ``server_app`` with ``num_clients`` virtual clients made by ``client_fn``.

    ``adversaries=Adversaries(0.2, "sign-flip")`` makes a fifth of them attack;
    ``client_speed=Stragglers(0.2, slowdown=10.0)`` makes a fifth of them ten times slower.
    ``select="gpus>=1"`` runs only on the clients whose node config (``node_config_fn``)
    matches, as a hub would place the run (docs/placement.md). ``out="runs/a"`` writes the
    run's ``history.jsonl`` there as it goes and its final ``model.npz`` at the end
    (docs/history.md, docs/artifacts.md). ``engine=RayEngine("HOST:6379")`` runs the clients
    on a Ray cluster (``RayEngine()``: a Ray started on this machine), with the same history
    as in-process for the same seed (docs/simulation.md).

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
    header = _header(server_app, num_clients, seed, run_config)
    writer = None if out is None else HistoryWriter(out, header)  # before the grid's threads
    make_grid = SimulationGrid if engine is None else partial(RayGrid, address=engine.address)
    grid = make_grid(
        client_fn,
        num_clients,
        concurrency=concurrency,
        run_config=run_config,
        node_config_fn=node_config_fn,
        adversaries=adversaries,
        client_speed=client_speed,
        select=select,
    )
    handlers = [h for h in (writer, on_event) if h is not None]
    try:
        result = run(grid, server_app, seed=seed, run_id="simulation", on_event=_each(handlers))
    finally:
        grid.close()
        if writer is not None:
            writer.close()
    if out is not None:
        save_arrays(result.arrays, Path(out) / MODEL_FILE)
    return result


def _header(
    server_app: ServerApp, num_clients: int, seed: int, run_config: Config | None
) -> History:
    """What ran, for ``history.jsonl``'s first line."""
    return History(
        seed=seed,
        config=dict(run_config or {}),
        strategy=type(server_app.strategy).__name__,
        num_rounds=server_app.num_rounds,
        clients=num_clients,
    )


def _each(handlers: list[EventHandler]) -> EventHandler | None:
    if len(handlers) < 2:
        return handlers[0] if handlers else None

    def handle(event: Event) -> None:
        for handler in handlers:
            handler(event)

    return handle
