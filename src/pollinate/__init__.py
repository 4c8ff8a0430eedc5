"""pollinate: federated learning that runs the same app in simulation and across real sites.

The common path needs nothing deeper than this module::

    from pollinate import Client, FedAvg, ServerApp, run_simulation
"""

from pollinate.aggregate import weighted_average
from pollinate.client import Client, Context, NumPyClient
from pollinate.errors import AppError, ClientError, PollinateError, RunError, WireError
from pollinate.records import Arrays, Config, Message, Metrics
from pollinate.server import Grid, History, RoundRecord, RunResult, ServerApp
from pollinate.simulation import SimulationGrid, run_simulation
from pollinate.strategy import (
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedProx,
    FedYogi,
    Strategy,
)

__version__ = "0.1.0"

__all__ = [
    "AppError",
    "Arrays",
    "Client",
    "ClientError",
    "Config",
    "Context",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedProx",
    "FedYogi",
    "Grid",
    "History",
    "Message",
    "Metrics",
    "NumPyClient",
    "PollinateError",
    "RoundRecord",
    "RunError",
    "RunResult",
    "ServerApp",
    "SimulationGrid",
    "Strategy",
    "WireError",
    "__version__",
    "run_simulation",
    "weighted_average",
]
