"""FedAvgM: FedAvg with server momentum."""

from __future__ import annotations

from typing import Unpack

import numpy as np

from pollinate.aggregate import momentum_step
from pollinate.records import Arrays
from pollinate.strategy.base import StrategyOptions
from pollinate.strategy.fedavg import FedAvg


class FedAvgM(FedAvg):
    """FedAvg with server momentum (Hsu et al. 2019, "Measuring the Effects of Non-Identical
    Data Distribution for Federated Visual Classification").

    With ``delta = w_t - mean`` the server keeps ``v = momentum * v + delta`` and sets
    ``w_{t+1} = w_t - server_learning_rate * v``. ``server_learning_rate=1, momentum=0`` is
    FedAvg.
    """

    def __init__(
        self,
        *,
        server_learning_rate: float = 1.0,
        server_momentum: float = 0.9,
        **options: Unpack[StrategyOptions],
    ) -> None:
        super().__init__(**options)
        self.server_learning_rate = server_learning_rate
        self.server_momentum = server_momentum
        self._velocity: dict[str, np.ndarray] = {}

    def server_update(self, current: Arrays, mean: Arrays) -> Arrays:
        out = {}
        for name, x in current.items():
            v = self._velocity.get(name, np.zeros_like(x))
            out[name], self._velocity[name] = momentum_step(
                x, mean[name], v, self.server_learning_rate, self.server_momentum
            )
        return Arrays({k: v.astype(current[k].dtype) for k, v in out.items()})

    def state(self) -> Arrays:
        return Arrays(self._velocity)

    def load_state(self, state: Arrays) -> None:
        self._velocity = dict(state.items())
