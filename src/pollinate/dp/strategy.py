"""DP-FedAvg: a strategy wrapper that clips each client's update and noises their mean.

One round (McMahan et al. 2018, "Learning Differentially Private Recurrent Language Models",
Alg. 1 with the fixed-denominator estimator, equal weights)::

    Delta_k  = clip(w_k - w_t, C)                      (each sampled client k, n of them)
    Delta    = (sum_k Delta_k + N(0, (z_Delta C)^2 I)) / n
    w_{t+1}  = server_update(w_t, w_t + Delta)         (the inner strategy's: FedAvg, FedAvgM..)

With adaptive clipping (Andrew et al. 2021, "Differentially Private Learning with Adaptive
Clipping", Alg. 1), the hub also counts the clients whose update was within the bound,
``b = (sum_k 1[||w_k - w_t|| <= C] + N(0, sigma_b^2)) / n``, and moves the bound
geometrically towards the ``gamma`` quantile of update norms: ``C <- C exp(-eta (b - gamma))``.
Both releases together are one Gaussian mechanism with noise multiplier ``z``, where
``z_Delta = (z^-2 - (2 sigma_b)^-2)^(-1/2)`` (their Thm. 1): ``noise_multiplier`` is ``z``,
the number the accountant sees.

Assumptions (see ``dp/accountant.py`` and docs/privacy.md): user-level DP; equal client
weights (each sampled client counts once, whatever its number of examples); the number of
replies ``n`` is public; sampling a fixed fraction is accounted as Poisson sampling; clients'
own fit metrics (train loss...) are not covered and pass through as they are; the noise comes
from numpy's generator, seeded from the OS unless ``noise_seed`` is given (for experiments:
a known seed makes the noise known).

Invariant: the hub holds O(model) memory: updates are clipped and summed as they arrive.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from pollinate.aggregate.mean import PartialSum
from pollinate.dp.accountant import _check_delta, _check_noise, epsilon
from pollinate.dp.clip import (
    CLIPPING_NORM_KEY,
    NORM_BELOW_KEY,
    _as_dtype,
    _check_bound,
    clip_factor,
)
from pollinate.dp.noise import GaussianNoise
from pollinate.records import Arrays, Config, Metrics
from pollinate.secagg.config import SecAggConfig
from pollinate.strategy.base import FitAggregator, FitResult, Strategy
from pollinate.strategy.fedbuff import FedBuff

log = logging.getLogger("pollinate.dp")

_INNER = "inner/"
_NORM = "dp/clipping_norm"
_RATES = "dp/sampling_rates"
_BELOW = "dp/within_bound"  # a partial sum's count of changes within the bound


@dataclass(frozen=True, slots=True)
class AdaptiveClipping:
    """Adaptive clipping (Andrew et al. 2021): the bound tracks a quantile of update norms.

    Args:
        initial_norm: the bound in round 1.
        count_stddev: ``sigma_b``, the noise on the count of clients within the bound; the
            paper suggests ``expected clients per round / 20``. It must exceed
            ``noise_multiplier / 2``.
        target_quantile: ``gamma``, the fraction of updates that should fall within the bound.
        learning_rate: ``eta``, the step of the geometric update.
    """

    initial_norm: float
    count_stddev: float
    target_quantile: float = 0.5
    learning_rate: float = 0.2

    def __post_init__(self) -> None:
        _check_bound(self.initial_norm)
        if not 0 < self.target_quantile < 1:
            raise ValueError(
                f"target_quantile must be in (0, 1), got {self.target_quantile!r}\n"
                "Hint: 0.5 clips to the median update norm."
            )
        if not self.learning_rate > 0 or not math.isfinite(self.learning_rate):
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate!r}")
        if not self.count_stddev > 0 or not math.isfinite(self.count_stddev):
            raise ValueError(
                f"count_stddev must be > 0, got {self.count_stddev!r}\nHint: "
                "count_stddev=clients_per_round / 20 (Andrew et al. 2021)."
            )

    def next_norm(self, norm: float, below: float, count: int, noise: float) -> float:
        """``C exp(-eta (b - gamma))`` with ``b`` the noised fraction within the bound."""
        fraction = (below + noise) / count
        return norm * math.exp(-self.learning_rate * (fraction - self.target_quantile))


class DifferentialPrivacy(Strategy):
    """Wraps a mean-based strategy (FedAvg, FedAvgM, FedAdam...) with DP-FedAvg.

    Args:
        strategy: the inner strategy; it samples, configures and applies the server update.
        noise_multiplier: ``z`` (> 0), noise std over the clipping norm.
        clipping_norm: a fixed bound ``C``; or give ``adaptive`` instead.
        adaptive: ``AdaptiveClipping(...)`` for a bound that follows the update norms.
        side: ``"hub"`` clips at the hub; ``"client"`` sends the bound in the fit config
            (``dp_clipping_norm``) for clients to clip with ``clip_update`` (the hub clips
            again, a no-op for honest clients, so a client that does not cannot break the
            guarantee).
        delta: the delta of (epsilon, delta)-DP; at most 1e-3, and below 1 / clients.
        epsilon_budget: stop the run before a round would take epsilon past it.
        noise_seed: seed the noise (experiments only: known noise protects nothing). Without
            it the noise comes from a cryptographic generator (``noise.py``).

    Each round's fit metrics carry ``dp_epsilon``, ``dp_delta``, ``dp_clipping_norm`` and
    ``dp_noise_multiplier``, so they are in ``history.jsonl`` and the run summary.

    >>> from pollinate import FedAvg
    >>> strategy = DifferentialPrivacy(FedAvg(), noise_multiplier=1.0, clipping_norm=0.5)
    """

    aggregates_mean = False  # a noised mean: it answers secure_aggregation_problem itself

    def __init__(
        self,
        strategy: Strategy,
        *,
        noise_multiplier: float,
        clipping_norm: float | None = None,
        adaptive: AdaptiveClipping | None = None,
        side: Literal["hub", "client"] = "hub",
        delta: float = 1e-5,
        epsilon_budget: float | None = None,
        noise_seed: int | None = None,
    ) -> None:
        _check_inner(strategy)
        _check_noise(noise_multiplier)
        _check_delta(delta)
        if delta > 1e-3:
            raise ValueError(
                f"delta={delta!r} is too large to mean privacy: with delta >= 1/n a mechanism "
                "may publish one client's data outright.\nHint: delta=1e-5 (below 1 / clients)."
            )
        bound = _initial_bound(clipping_norm, adaptive)
        if side not in ("hub", "client"):
            raise ValueError(f"side must be 'hub' or 'client', got {side!r}")
        if epsilon_budget is not None and not epsilon_budget > 0:
            raise ValueError(f"epsilon_budget must be > 0 or None, got {epsilon_budget!r}")
        self.update_noise = _update_noise(noise_multiplier, adaptive)
        super().__init__(sampling=strategy.sampling, failure_tolerance=strategy.failure_tolerance)
        self.inner = strategy
        self.noise_multiplier = float(noise_multiplier)
        self.adaptive = adaptive
        self.side = side
        self.delta = float(delta)
        self.epsilon_budget = epsilon_budget
        self.noise_seed = noise_seed
        self.clipping_norm = bound
        # the sampling rate of every round sampled so far: what the accountant composes
        self.sampling_rates: list[float] = []

    def __repr__(self) -> str:
        return (
            f"DifferentialPrivacy({self.inner!r}, noise_multiplier={self.noise_multiplier}, "
            f"clipping_norm={self.clipping_norm}, adaptive={self.adaptive!r}, "
            f"side={self.side!r}, delta={self.delta})"
        )

    # --- privacy spent ---------------------------------------------------------------------

    def epsilon(self, extra_rounds: Sequence[float] = ()) -> float:
        """Epsilon at ``delta`` spent by the rounds sampled so far (plus ``extra_rounds``,
        sampling rates of rounds not yet run); 0 before any round."""
        rates = [*self.sampling_rates, *extra_rounds]
        return epsilon(self.noise_multiplier, rates, self.delta) if rates else 0.0

    def finished(self, rounds_done: int) -> str | None:
        """Stop before the round that would take epsilon past ``epsilon_budget``."""
        if self.epsilon_budget is None:
            return None
        next_rate = self.sampling_rates[-1] if self.sampling_rates else self.sampling.fraction_fit
        after = self.epsilon([max(next_rate, 1e-12)])
        if after <= self.epsilon_budget:
            return None
        return (
            f"privacy budget: one more round would spend epsilon={after:.3f} > "
            f"epsilon_budget={self.epsilon_budget} (delta={self.delta}); spent "
            f"{self.epsilon():.3f} in {rounds_done} rounds"
        )

    # --- delegated to the inner strategy ---------------------------------------------------

    def sample_fit(self, available: Sequence[int], rng: np.random.Generator) -> list[int]:
        chosen = self.inner.sample_fit(available, rng)
        # the real rate, not fraction_fit: min_fit_clients may sample more
        self.sampling_rates.append(len(chosen) / len(available))
        return chosen

    def sample_evaluate(self, available: Sequence[int], rng: np.random.Generator) -> list[int]:
        return self.inner.sample_evaluate(available, rng)

    def configure_fit(self, round: int) -> Config:
        config = self.inner.configure_fit(round)
        if self.side == "client":
            config[CLIPPING_NORM_KEY] = self.clipping_norm
        return config

    def configure_evaluate(self, round: int) -> Config:
        return self.inner.configure_evaluate(round)

    def evaluate(self, round: int, arrays: Arrays) -> tuple[float, Metrics] | None:
        return self.inner.evaluate(round, arrays)

    def aggregate_evaluate_metrics(self, results: list[tuple[int, Metrics]]) -> Metrics:
        return self.inner.aggregate_evaluate_metrics(results)

    def aggregate_fit_metrics(self, results: list[tuple[int, Metrics]]) -> Metrics:
        # the within-bound bits are released only noised (in the clipping norm), not averaged
        plain = [(n, {k: v for k, v in m.items() if k != NORM_BELOW_KEY}) for n, m in results]
        return {
            **self.inner.aggregate_fit_metrics(plain),
            "dp_epsilon": self.epsilon(),
            "dp_delta": self.delta,
            "dp_clipping_norm": self.clipping_norm,
            "dp_noise_multiplier": self.noise_multiplier,
        }

    def start_fit(self, round: int, current: Arrays) -> FitAggregator:
        if self.noise_seed is None:
            noise = GaussianNoise()
        else:
            noise = GaussianNoise.seeded(self.noise_seed, round)
        return _ClippedNoisedMean(self, current, noise)

    def secure_aggregation_problem(self, config: SecAggConfig) -> str | None:
        """DP-FedAvg on a securely summed mean: clients clip (``side="client"``), with a
        fixed bound, weighed equally; the hub noises the mean it is given."""
        if self.side != "client":
            return (
                "DifferentialPrivacy clips at the hub, which needs each update; with secure "
                "aggregation the clients must clip.\nHint: DifferentialPrivacy(..., "
                "side='client') and clip_update in the client"
            )
        if self.adaptive is not None:
            return (
                "adaptive clipping counts the clients whose update was within the bound, "
                "which secure aggregation hides.\nHint: a fixed clipping_norm"
            )
        if config.max_weight is not None:
            return (
                "DP-FedAvg weighs every client alike, and secure aggregation weighs them by "
                "examples.\nHint: SecAggConfig(max_weight=None)"
            )
        return None

    # --- state to resume from --------------------------------------------------------------

    def state(self) -> Arrays:
        inner = {_INNER + name: a for name, a in self.inner.state().items()}
        return Arrays(
            {
                **inner,
                _NORM: np.array(self.clipping_norm),
                _RATES: np.array(self.sampling_rates, np.float64),
            }
        )

    def load_state(self, state: Arrays) -> None:
        inner = {k[len(_INNER) :]: a for k, a in state.items() if k.startswith(_INNER)}
        self.inner.load_state(Arrays(inner))
        if _NORM in state:
            self.clipping_norm = float(state[_NORM])
            self.sampling_rates = [float(r) for r in state[_RATES]]


@dataclass(frozen=True)
class ClippedSum:
    """How a worker sums DP-FedAvg's updates (``loop/summing.py``): each change clipped to
    the round's ``bound``, summed, and the changes within it counted (``client_side``: the
    count the clients report)."""

    bound: float
    client_side: bool

    def start(self, current: Arrays) -> _ClippedSum:
        return _ClippedSum(current, self)


class _ClippedSum:
    """Clipped changes summed as they arrive (O(model)), with their count and how many of
    them were within the bound."""

    def __init__(self, current: Arrays, fold: ClippedSum) -> None:
        self.current, self._fold = current, fold
        self.sums = {name: np.zeros(a.shape, np.float64) for name, a in current.items()}
        self.count = 0
        self.below = 0

    def add(self, result: FitResult) -> None:
        if result.num_examples <= 0:
            return  # trained on nothing: it has no update to contribute
        delta = {
            name: np.asarray(result.arrays[name], np.float64) - np.asarray(old, np.float64)
            for name, old in self.current.items()
        }
        norm = math.sqrt(sum(float(np.dot(d.ravel(), d.ravel())) for d in delta.values()))
        bound = self._fold.bound
        # a securely summed mean of `count` clipped updates is within the bound already
        factor = clip_factor(norm, bound) * result.count
        for name, d in delta.items():
            self.sums[name] += factor * d
        self.count += result.count
        if result.count == 1:
            self.below += self._within_bound(result, norm, bound)

    def _within_bound(self, result: FitResult, norm: float, bound: float) -> int:
        # client side: the hub sees clipped updates, so only the client knows the bit
        reported = result.metrics.get(NORM_BELOW_KEY)
        if self._fold.client_side and isinstance(reported, int | float):
            return int(reported >= 0.5)
        return int(norm <= bound)

    def partial(self) -> PartialSum:
        sums = Arrays(self.sums) if self.count else Arrays()
        return PartialSum(sums, float(self.count), self.count, {_BELOW: self.below})

    def merge(self, partial: PartialSum) -> None:
        if partial.count == 0:
            return
        if list(partial.sums) != list(self.sums) or any(
            partial.sums[name].shape != total.shape or partial.sums[name].dtype != np.float64
            for name, total in self.sums.items()
        ):
            raise ValueError("a partial DP sum must hold float64 sums shaped as the model")
        for name, total in self.sums.items():
            total += partial.sums[name]
        self.count += partial.count
        self.below += int(partial.tallies.get(_BELOW, 0))


class _ClippedNoisedMean:
    """Sums clipped updates as they arrive, here or on workers (``ClippedSum``); finishing
    noises their mean."""

    def __init__(self, dp: DifferentialPrivacy, current: Arrays, noise: GaussianNoise):
        self._dp, self._noise = dp, noise
        self._fold = ClippedSum(dp.clipping_norm, dp.side == "client")
        self._sum = self._fold.start(current)

    def add(self, result: FitResult) -> None:
        self._sum.add(result)

    def merge(self, partial: PartialSum) -> None:
        self._sum.merge(partial)

    def worker_fold(self) -> ClippedSum:
        return self._fold

    def finish(self) -> Arrays:
        total = self._sum
        if total.count == 0:
            raise ValueError("no update with examples was added; the DP mean is undefined")
        dp, n, current = self._dp, total.count, total.current
        std = dp.update_noise * dp.clipping_norm
        mean = {}
        for name, summed in total.sums.items():
            noised = (summed + self._noise.normal(std, summed.shape)) / n
            mean[name] = _as_dtype(
                np.asarray(current[name], np.float64) + noised, current[name].dtype
            )
        result = dp.inner.server_update(current, Arrays(mean))
        if dp.adaptive is not None:
            noise = float(self._noise.normal(dp.adaptive.count_stddev))
            dp.clipping_norm = dp.adaptive.next_norm(dp.clipping_norm, total.below, n, noise)
        return result


def _initial_bound(clipping_norm: float | None, adaptive: AdaptiveClipping | None) -> float:
    if adaptive is not None and clipping_norm is None:
        return float(adaptive.initial_norm)
    if clipping_norm is not None and adaptive is None:
        _check_bound(clipping_norm)
        return float(clipping_norm)
    raise ValueError(
        "give exactly one of clipping_norm (a fixed bound) and adaptive, got "
        f"clipping_norm={clipping_norm!r}, adaptive={adaptive!r}\nHint: "
        "DifferentialPrivacy(FedAvg(), noise_multiplier=1.0, clipping_norm=0.5)"
    )


def _update_noise(noise_multiplier: float, adaptive: AdaptiveClipping | None) -> float:
    """``z_Delta``: the noise multiplier left for the update (Andrew et al. 2021, Thm. 1)."""
    if adaptive is None:
        return float(noise_multiplier)
    left = noise_multiplier**-2 - (2 * adaptive.count_stddev) ** -2
    if left <= 0:
        raise ValueError(
            f"count_stddev={adaptive.count_stddev!r} is too small for noise_multiplier="
            f"{noise_multiplier!r}: the count alone would spend the whole privacy budget "
            "(it needs count_stddev > noise_multiplier / 2).\nHint: "
            f"AdaptiveClipping(count_stddev={noise_multiplier:.3g}) or more."
        )
    return float(left**-0.5)


def _check_inner(strategy: Strategy) -> None:
    if isinstance(strategy, DifferentialPrivacy | FedBuff) or not isinstance(strategy, Strategy):
        raise TypeError(
            f"DifferentialPrivacy wraps a synchronous, mean-based strategy, got {strategy!r}"
            "\nHint: DifferentialPrivacy(FedAvg(...), noise_multiplier=1.0, clipping_norm=0.5)"
        )
    if not strategy.aggregates_mean:
        raise TypeError(
            f"{type(strategy).__name__} does not aggregate by a mean, and DP-FedAvg's noise "
            "calibration holds only for a mean of clipped updates.\nHint: wrap FedAvg, "
            "FedAvgM, FedProx, FedAdagrad, FedAdam or FedYogi."
        )
