"""pollinate: federated learning that runs the same app in simulation and across real sites.

The common path needs nothing deeper than this module::

    from pollinate import Client, FedAvg, ServerApp, run_simulation
"""

from pollinate.aggregate import weighted_average
from pollinate.artifacts import load_arrays, save_arrays
from pollinate.client import Client, Context, NumPyClient
from pollinate.errors import AppError, ClientError, PollinateError, RunError, WireError
from pollinate.loop import Grid, History, RoundRecord, RunResult, ServerApp, Validation
from pollinate.records import Arrays, Config, Message, Metrics
from pollinate.simulation import Adversaries, SimulationGrid, Stragglers, run_simulation
from pollinate.strategy import (
    Bulyan,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedBuff,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    MultiKrum,
    QFedAvg,
    Sampling,
    Strategy,
)

__version__ = "0.1.0"

__all__ = [
    "Adversaries",
    "AppError",
    "Arrays",
    "Bulyan",
    "Client",
    "ClientError",
    "Config",
    "Context",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedBuff",
    "FedMedian",
    "FedProx",
    "FedTrimmedAvg",
    "FedYogi",
    "Grid",
    "History",
    "Krum",
    "Message",
    "Metrics",
    "MultiKrum",
    "NumPyClient",
    "PollinateError",
    "QFedAvg",
    "RoundRecord",
    "RunError",
    "RunResult",
    "Sampling",
    "ServerApp",
    "SimulationGrid",
    "Stragglers",
    "Strategy",
    "Validation",
    "WireError",
    "__version__",
    "load_arrays",
    "run_simulation",
    "save_arrays",
    "weighted_average",
]
