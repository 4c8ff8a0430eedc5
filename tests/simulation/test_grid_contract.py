"""SimulationGrid keeps the Grid contract."""

from __future__ import annotations

from pollinate import Grid, SimulationGrid
from pollinate.client import ClientFn
from tests.loop.grid_contract import GridContract


class TestSimulationGrid(GridContract):
    def make_grid(self, client_fn: ClientFn, num_nodes: int) -> Grid:
        return SimulationGrid(client_fn, num_nodes, concurrency=3)
