"""The simulation engines: many virtual clients in one process, or on a Ray cluster."""

from pollinate.simulation.adversary import Adversaries, flip_labels
from pollinate.simulation.grid import SimulationGrid
from pollinate.simulation.ray_engine import RayEngine, RayGrid
from pollinate.simulation.run import run_simulation
from pollinate.simulation.speed import Stragglers

__all__ = [
    "Adversaries",
    "RayEngine",
    "RayGrid",
    "SimulationGrid",
    "Stragglers",
    "flip_labels",
    "run_simulation",
]
