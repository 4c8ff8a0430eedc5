"""FedTrimmedAvg: the coordinate-wise trimmed mean of the clients' models."""

from __future__ import annotations

from typing import Unpack

from pollinate.aggregate import trimmed_mean
from pollinate.checks import number
from pollinate.records import Arrays
from pollinate.strategy.base import StrategyOptions
from pollinate.strategy.robust import RobustStrategy


class FedTrimmedAvg(RobustStrategy):
    """The coordinate-wise beta-trimmed mean of the round's models (Yin et al. 2018,
    "Byzantine-Robust Distributed Learning: Towards Optimal Statistical Rates", ICML,
    Definition 2): per coordinate, drop the ``floor(beta n)`` largest and smallest of the n
    values and average the rest, ``1 / ((1 - 2 beta) n) sum_{x in U_j} x``, unweighted.

    When to use: up to a ``beta`` fraction of the clients may send wrong or hostile updates.
    It keeps more of the honest information than the median (for ``beta`` near 1/2 it is the
    median, for 0 the plain mean); with ``beta = 0.2`` nothing is dropped below 5 replies.

    Cost: the round's updates are kept until it ends (memory: one copy per update, n x model;
    it cannot stream), plus an 8 MB working block; time O(n log n x model).

    >>> from pollinate import Sampling
    >>> strategy = FedTrimmedAvg(beta=0.1, sampling=Sampling(min_fit_clients=10))
    """

    def __init__(self, *, beta: float = 0.2, **options: Unpack[StrategyOptions]) -> None:
        hint = "FedTrimmedAvg(beta=0.1) drops the 10% largest and smallest of each value."
        self.beta = number("beta", beta, minimum=0, below=0.5, hint=hint)
        super().__init__(**options)

    def combine(self, updates: list[Arrays], weights: list[int]) -> Arrays:
        return trimmed_mean(updates, self.beta)
