"""FedMedian: the coordinate-wise median of the clients' models as the next global model."""

from __future__ import annotations

from pollinate.aggregate import coordinate_median
from pollinate.records import Arrays
from pollinate.strategy.robust import RobustStrategy


class FedMedian(RobustStrategy):
    """The coordinate-wise median of the round's models (Yin et al. 2018, "Byzantine-Robust
    Distributed Learning: Towards Optimal Statistical Rates", ICML, Definition 1):
    ``w_{t+1, j} = med{w_{t+1, j}^k : k in S_t}``, unweighted.

    When to use: some clients may send wrong or hostile updates and you cannot say how many;
    fewer than half of them cannot drag any coordinate outside the range of the honest ones.
    On clean, non-IID data it converges slower than FedAvg, and it ignores example counts.

    Cost: the round's updates are kept until it ends (memory: one copy per update, n x model;
    it cannot stream), plus an 8 MB working block; time O(n x model).

    >>> from pollinate import Sampling
    >>> strategy = FedMedian(sampling=Sampling(fraction_fit=0.5, min_fit_clients=5))
    """

    def combine(self, updates: list[Arrays], weights: list[int]) -> Arrays:
        return coordinate_median(updates)
