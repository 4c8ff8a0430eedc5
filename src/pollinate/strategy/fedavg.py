"""FedAvg and FedProx: the weighted mean of client models as the next global model."""

from __future__ import annotations

from typing import Unpack

from pollinate.checks import number
from pollinate.client.fedprox import PROXIMAL_MU_KEY
from pollinate.records import Config
from pollinate.strategy.base import Strategy, StrategyOptions


class FedAvg(Strategy):
    """Federated Averaging (McMahan et al. 2017, "Communication-Efficient Learning of Deep
    Networks from Decentralized Data"): ``w_{t+1} = sum_k (n_k / n) w_{t+1}^k``, the mean of
    the sampled clients' models weighted by their number of examples.

    >>> from pollinate import Sampling
    >>> strategy = FedAvg(sampling=Sampling(fraction_fit=0.5, min_fit_clients=2))
    """


class FedProx(FedAvg):
    """FedProx (Li et al. 2020, "Federated Optimization in Heterogeneous Networks").

    Aggregates like FedAvg; each client adds ``(mu / 2) ||w - w_t||^2`` to its local loss.
    ``mu`` travels in every fit config as ``proximal_mu``; clients apply it with
    ``pollinate.client.proximal_gradient`` (NumPy) or ``proximal_term`` (PyTorch).
    """

    def __init__(self, *, proximal_mu: float, **options: Unpack[StrategyOptions]) -> None:
        hint = "FedProx(proximal_mu=0.01); 0 behaves like FedAvg."
        mu = number("proximal_mu", proximal_mu, minimum=0, hint=hint)
        super().__init__(**options)
        self.proximal_mu = mu

    def configure_fit(self, round: int) -> Config:
        return {**super().configure_fit(round), PROXIMAL_MU_KEY: self.proximal_mu}
