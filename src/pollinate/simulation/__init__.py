"""The simulation engine: many virtual clients in one process."""

from pollinate.simulation.adversary import Adversaries, flip_labels
from pollinate.simulation.grid import SimulationGrid
from pollinate.simulation.run import run_simulation
from pollinate.simulation.speed import Stragglers

__all__ = ["Adversaries", "SimulationGrid", "Stragglers", "flip_labels", "run_simulation"]
