"""Krum and Multi-Krum: the client models closest to their neighbours."""

from __future__ import annotations

from typing import Unpack

from pollinate.aggregate import multi_krum
from pollinate.checks import integer
from pollinate.records import Arrays
from pollinate.strategy.base import StrategyOptions
from pollinate.strategy.robust import RobustStrategy, check_malicious, tolerable


class MultiKrum(RobustStrategy):
    """Multi-Krum (Blanchard et al. 2017, "Machine Learning with Adversaries: Byzantine
    Tolerant Gradient Descent", NeurIPS, Section 4). Each model k gets the score
    ``s(k) = sum_{k -> j} ||w^k - w^j||^2`` over its ``n - f - 2`` nearest models; the next
    global model is the mean of the ``num_selected`` best-scored ones, weighted by examples.

    When to use: at most ``num_malicious`` (f) clients per round may send anything, and the
    honest models lie close together (IID-ish data); a hostile model far from the others is
    never picked. Needs ``n > 2f + 2`` replies per round. Averaging several
    (``num_selected`` about ``n - f``) keeps more honest information than Krum's one.

    Cost: the round's updates are kept until it ends (memory: one copy per update, n x model;
    it cannot stream); time O(n^2 x model) for the pairwise distances.

    >>> strategy = MultiKrum(num_malicious=1, num_selected=3)
    """

    requirement = "n > 2f + 2 (f = num_malicious)"

    def __init__(
        self, *, num_malicious: int, num_selected: int, **options: Unpack[StrategyOptions]
    ) -> None:
        self.num_malicious = check_malicious(type(self).__name__, num_malicious)
        hint = "MultiKrum(num_malicious=1, num_selected=3) averages the 3 best models."
        self.num_selected = integer("num_selected", num_selected, minimum=1, hint=hint)
        super().__init__(**options)

    @property
    def min_replies(self) -> int:
        return max(2 * self.num_malicious + 3, self.num_selected)

    @property
    def fewest_replies(self) -> int:
        return 3  # f = 0 needs n > 2

    def combine(self, updates: list[Arrays], weights: list[int]) -> Arrays:
        n = len(updates)
        f = tolerable(type(self).__name__, self.num_malicious, (n - 3) // 2, n)
        return multi_krum(updates, weights, f, min(self.num_selected, n))


class Krum(MultiKrum):
    """Krum (Blanchard et al. 2017, Section 4): the one model with the lowest score
    ``s(k) = sum_{k -> j} ||w^k - w^j||^2`` over its ``n - f - 2`` nearest models becomes
    the next global model, as it is (example counts play no part).

    When to use: as MultiKrum, when protection matters more than progress per round: each
    round keeps one client's model and discards the others' work.

    Cost: as MultiKrum: one copy per update (n x model, it cannot stream); O(n^2 x model).

    >>> strategy = Krum(num_malicious=1)
    """

    def __init__(self, *, num_malicious: int, **options: Unpack[StrategyOptions]) -> None:
        super().__init__(num_malicious=num_malicious, num_selected=1, **options)
