"""Bulyan: Krum's selection followed by a trimmed mean around the median."""

from __future__ import annotations

from typing import Unpack

from pollinate.aggregate import bulyan
from pollinate.records import Arrays
from pollinate.strategy.base import StrategyOptions
from pollinate.strategy.robust import RobustStrategy, check_malicious, tolerable


class Bulyan(RobustStrategy):
    """Bulyan over Krum (El Mhamdi et al. 2018, "The Hidden Vulnerability of Distributed
    Learning in Byzantium", ICML, Section 4). With f = ``num_malicious``: select
    ``theta = n - 2f`` models by repeated Krum, then per coordinate average the
    ``beta = theta - 2f`` selected values closest to their median,
    ``w_{t+1, j} = (1 / beta) sum_{x in M_j} x``; unweighted.

    When to use: at most f clients per round may be hostile and may craft updates that pass
    Krum yet push single coordinates far (attacks on high-dimensional models); Bulyan bounds
    every coordinate as well. Needs ``n >= 4f + 3`` replies per round: ``min_fit_clients``
    defaults to that; sample more if failures are expected.

    Cost: the round's updates are kept until it ends (memory: one copy per update, n x model;
    it cannot stream); time O(n^2 x model) for the distances, computed once.

    >>> strategy = Bulyan(num_malicious=1)  # samples at least 7 clients per round
    """

    requirement = "n >= 4f + 3 (f = num_malicious)"

    def __init__(self, *, num_malicious: int, **options: Unpack[StrategyOptions]) -> None:
        self.num_malicious = check_malicious(type(self).__name__, num_malicious)
        super().__init__(**options)

    @property
    def min_replies(self) -> int:
        return 4 * self.num_malicious + 3

    @property
    def fewest_replies(self) -> int:
        return 3  # f = 0 needs n >= 3

    def combine(self, updates: list[Arrays], weights: list[int]) -> Arrays:
        n = len(updates)
        return bulyan(updates, tolerable(type(self).__name__, self.num_malicious, (n - 3) // 4, n))
