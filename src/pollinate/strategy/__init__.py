"""Strategies: who trains with what, and how results become the next global model."""

from pollinate.strategy.base import (
    BaseStrategy,
    FitAggregator,
    FitResult,
    Rounds,
    Sampling,
    Strategy,
    StrategyOptions,
    UnusableUpdate,
)
from pollinate.strategy.bulyan import Bulyan
from pollinate.strategy.fedavg import FedAvg, FedProx
from pollinate.strategy.fedavgm import FedAvgM
from pollinate.strategy.fedbuff import FedBuff
from pollinate.strategy.fedmedian import FedMedian
from pollinate.strategy.fedopt import FedAdagrad, FedAdam, FedOpt, FedYogi
from pollinate.strategy.fedtrimmedavg import FedTrimmedAvg
from pollinate.strategy.krum import Krum, MultiKrum
from pollinate.strategy.qfedavg import QFedAvg
from pollinate.strategy.xgboost import FedXgbBagging, FedXgbCyclic

__all__ = [
    "STRATEGIES",
    "BaseStrategy",
    "Bulyan",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedBuff",
    "FedMedian",
    "FedOpt",
    "FedProx",
    "FedTrimmedAvg",
    "FedXgbBagging",
    "FedXgbCyclic",
    "FedYogi",
    "FitAggregator",
    "FitResult",
    "Krum",
    "MultiKrum",
    "QFedAvg",
    "Rounds",
    "Sampling",
    "Strategy",
    "StrategyOptions",
    "UnusableUpdate",
    "strategy_class",
]

STRATEGIES: dict[str, type[BaseStrategy]] = {
    "fedavg": FedAvg,
    "fedavgm": FedAvgM,
    "fedprox": FedProx,
    "fedadagrad": FedAdagrad,
    "fedadam": FedAdam,
    "fedyogi": FedYogi,
    "fedmedian": FedMedian,
    "fedtrimmedavg": FedTrimmedAvg,
    "krum": Krum,
    "multikrum": MultiKrum,
    "bulyan": Bulyan,
    "qfedavg": QFedAvg,
    "fedbuff": FedBuff,
    "fedxgbbagging": FedXgbBagging,
    "fedxgbcyclic": FedXgbCyclic,
}
"""Strategies by the name a run config may give them (lower case)."""


def strategy_class(name: str) -> type[BaseStrategy]:
    """The strategy a config names, e.g. ``strategy_class("FedAdam")``; ValueError if unknown.

    >>> strategy_class("fedavgm").__name__
    'FedAvgM'
    """
    import difflib

    key = name.strip().lower()
    if key in STRATEGIES:
        return STRATEGIES[key]
    close = difflib.get_close_matches(key, list(STRATEGIES), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown strategy {name!r}.{hint} Known: {', '.join(STRATEGIES)}.")
