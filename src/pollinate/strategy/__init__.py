"""Strategies: who trains with what, and how results become the next global model."""

from collections.abc import Iterable
from typing import TypeVar, overload

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


_S = TypeVar("_S", bound=BaseStrategy)


@overload
def strategy_class(name: str) -> type[BaseStrategy]: ...
@overload
def strategy_class(name: str, among: Iterable[type[_S]]) -> type[_S]: ...
def strategy_class(
    name: str, among: Iterable[type[BaseStrategy]] | None = None
) -> type[BaseStrategy]:
    """The strategy a config names, e.g. ``strategy_class("FedAdam")``: the one way an app
    chooses its strategy by name (``--config strategy=NAME``). ``among`` is what the app
    accepts; a name outside it, or unknown, is a ValueError that suggests and lists only
    those.

    >>> strategy_class("fedavgm").__name__
    'FedAvgM'
    >>> strategy_class("krum", among=[FedAvg, FedProx])
    Traceback (most recent call last):
    ValueError: strategy 'krum' does not apply to this app, which runs: fedavg, fedprox.
    """
    import difflib

    accepted = {k: v for k, v in STRATEGIES.items() if among is None or v in set(among)}
    key = name.strip().lower()
    if key in accepted:
        return accepted[key]
    runs = ", ".join(accepted)
    if key in STRATEGIES:
        raise ValueError(f"strategy {name!r} does not apply to this app, which runs: {runs}.")
    close = difflib.get_close_matches(key, list(accepted), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    known = "Known" if among is None else "This app runs"
    raise ValueError(f"unknown strategy {name!r}.{hint} {known}: {runs}.")
