"""The simulation engine: many virtual clients in one process."""

from pollinate.simulation.grid import SimulationGrid
from pollinate.simulation.run import run_simulation

__all__ = ["SimulationGrid", "run_simulation"]
