"""Strategies: who trains with what, and how results become the next global model."""

from pollinate.strategy.base import FitAggregator, FitResult, Strategy
from pollinate.strategy.fedavg import FedAvg, FedProx
from pollinate.strategy.fedavgm import FedAvgM
from pollinate.strategy.fedopt import FedAdagrad, FedAdam, FedOpt, FedYogi

__all__ = [
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedOpt",
    "FedProx",
    "FedYogi",
    "FitAggregator",
    "FitResult",
    "Strategy",
]
