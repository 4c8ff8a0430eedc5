"""The FedOpt family: FedAdagrad, FedAdam and FedYogi (adaptive server optimizers)."""

from __future__ import annotations

import math
from typing import Unpack

import numpy as np

from pollinate.aggregate import (
    adagrad_moment,
    adam_moment,
    adaptive_step,
    first_moment,
    yogi_moment,
)
from pollinate.records import Arrays
from pollinate.strategy.base import FitAggregator, StrategyOptions
from pollinate.strategy.fedavg import FedAvg


class FedOptOptions(StrategyOptions, total=False):
    """FedOpt's own keyword arguments beside every strategy's (for subclasses' ``Unpack``)."""

    eta: float
    beta_1: float
    beta_2: float
    tau: float
    initial_v: float | None


class FedOpt(FedAvg):
    """Adaptive federated optimization (Reddi et al. 2021, "Adaptive Federated
    Optimization", Algorithm 2).

    The mean client change ``delta = mean - x`` is a pseudo-gradient:
    ``m = beta_1 m + (1 - beta_1) delta``, ``v`` by the subclass's rule, and
    ``x' = x + eta m / (sqrt(v) + tau)``. ``m`` starts at 0 and ``v`` at ``tau^2``, as in
    the paper; ``initial_v=0.0`` starts it at 0, as Flower does. ``eta`` is the server
    learning rate; ``tau`` controls the degree of adaptivity.
    """

    def __init__(
        self,
        *,
        eta: float = 1e-1,
        beta_1: float = 0.9,
        beta_2: float = 0.99,
        tau: float = 1e-9,
        initial_v: float | None = None,
        **options: Unpack[StrategyOptions],
    ) -> None:
        super().__init__(**options)
        if initial_v is not None and not initial_v >= 0:
            raise ValueError(
                f"initial_v must be a number >= 0 or None (tau^2), got {initial_v!r}\n"
                "Hint: initial_v=0.0 starts v at 0, as Flower does"
            )
        # written so that NaN fails every check
        if not (eta > 0 and tau > 0 and 0 <= beta_1 < 1 and 0 <= beta_2 < 1):
            raise ValueError(
                f"need eta > 0, tau > 0 and betas in [0, 1); got eta={eta!r}, tau={tau!r}, "
                f"beta_1={beta_1!r}, beta_2={beta_2!r}"
            )
        self.eta, self.beta_1, self.beta_2, self.tau = eta, beta_1, beta_2, tau
        self.initial_v = tau**2 if initial_v is None else float(initial_v)
        self._round = 0
        self._m: dict[str, np.ndarray] = {}
        self._v: dict[str, np.ndarray] = {}

    def second_moment(self, v: np.ndarray, delta: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def step_size(self, round: int) -> float:
        """The server learning rate of ``round``: ``eta``."""
        return self.eta

    def start_fit(self, round: int, current: Arrays) -> FitAggregator:
        self._round = round
        return super().start_fit(round, current)

    def server_update(self, current: Arrays, mean: Arrays) -> Arrays:
        eta = self.step_size(self._round)
        out = {}
        for name, x in current.items():
            x64 = x.astype(np.float64)
            delta = mean[name].astype(np.float64) - x64
            m = first_moment(self._m.get(name, np.zeros_like(x64)), delta, self.beta_1)
            v = self.second_moment(self._v.get(name, np.full_like(x64, self.initial_v)), delta)
            self._m[name], self._v[name] = m, v
            out[name] = adaptive_step(x64, m, v, eta, self.tau).astype(x.dtype)
        return Arrays(out)

    def state(self) -> Arrays:
        return Arrays(
            {
                **{f"m/{k}": v for k, v in self._m.items()},
                **{f"v/{k}": v for k, v in self._v.items()},
            }
        )

    def load_state(self, state: Arrays) -> None:
        self._m = {k[2:]: v for k, v in state.items() if k.startswith("m/")}
        self._v = {k[2:]: v for k, v in state.items() if k.startswith("v/")}


class FedAdagrad(FedOpt):
    """FedOpt with ``v = v + delta^2`` (Reddi et al. 2021)."""

    def second_moment(self, v: np.ndarray, delta: np.ndarray) -> np.ndarray:
        return adagrad_moment(v, delta)


class FedAdam(FedOpt):
    """FedOpt with ``v = beta_2 v + (1 - beta_2) delta^2`` (Reddi et al. 2021).

    ``bias_correction=True`` scales the step of round ``t`` as Flower's FedAdam does:
    ``eta_t = eta sqrt(1 - beta_2^(t+1)) / (1 - beta_1^(t+1))`` (Adam's correction, with
    Flower's exponent ``t + 1``); the paper's Algorithm 2 has none, nor does the default.
    """

    def __init__(self, *, bias_correction: bool = False, **options: Unpack[FedOptOptions]) -> None:
        super().__init__(**options)
        self.bias_correction = bias_correction

    def step_size(self, round: int) -> float:
        if not self.bias_correction:
            return self.eta
        t = round + 1.0
        return self.eta * math.sqrt(1 - self.beta_2**t) / (1 - self.beta_1**t)

    def second_moment(self, v: np.ndarray, delta: np.ndarray) -> np.ndarray:
        return adam_moment(v, delta, self.beta_2)


class FedYogi(FedOpt):
    """FedOpt with ``v = v - (1 - beta_2) delta^2 sign(v - delta^2)`` (Reddi et al. 2021)."""

    def second_moment(self, v: np.ndarray, delta: np.ndarray) -> np.ndarray:
        return yogi_moment(v, delta, self.beta_2)
