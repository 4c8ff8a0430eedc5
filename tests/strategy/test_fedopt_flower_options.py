"""The options that reproduce Flower's adaptive formulas, off by default, on hand-computed
cases: one weight at x = 0, one client whose model is 1, so delta = 1 in round 1."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pollinate import Arrays
from pollinate.flower import FedAdagrad as FlowerFedAdagrad
from pollinate.flower import FedAdam as FlowerFedAdam
from pollinate.flower import FedYogi as FlowerFedYogi
from pollinate.strategy import FedAdagrad, FedAdam, FedOpt, FedYogi, FitResult


def step(strategy: FedOpt, round: int = 1, x: float = 0.0, client: float = 1.0) -> float:
    aggregator = strategy.start_fit(round, Arrays({"w": np.array([x])}))
    aggregator.add(FitResult(0, Arrays({"w": np.array([client])}), 10, {}))
    return float(aggregator.finish()["w"][0])


def test_v_starts_at_tau_squared_by_default_as_in_the_paper() -> None:
    # m = 1 (beta_1 = 0), v = tau^2 + 1 = 1.25, x' = eta m / (sqrt(v) + tau)
    assert step(FedAdagrad(eta=1.0, beta_1=0.0, tau=0.5)) == pytest.approx(1 / (1.25**0.5 + 0.5))


def test_initial_v_zero_starts_v_at_zero_as_flower_does() -> None:
    # v = 0 + 1 = 1: x' = 1 / (1 + 0.5)
    strategy = FedAdagrad(eta=1.0, beta_1=0.0, tau=0.5, initial_v=0.0)
    assert step(strategy) == pytest.approx(2 / 3)


def test_fedadam_bias_correction_scales_the_step_as_flowers_fedadam() -> None:
    # m = 0.1, v = 0.01 (from 0): x' = eta_t 0.1 / (0.1 + 0.5), with Flower's
    # eta_t = eta sqrt(1 - beta_2^(t+1)) / (1 - beta_1^(t+1)) at t = 1
    eta_1 = math.sqrt(1 - 0.99**2) / (1 - 0.9**2)
    strategy = FedAdam(eta=1.0, tau=0.5, initial_v=0.0, bias_correction=True)
    assert step(strategy) == pytest.approx(eta_1 * 0.1 / 0.6)
    assert step(FedAdam(eta=1.0, tau=0.5, initial_v=0.0)) == pytest.approx(0.1 / 0.6)


def test_bias_correction_follows_the_round() -> None:
    # round 3 with fresh moments: only eta_t changes, with t + 1 = 4
    eta_3 = math.sqrt(1 - 0.99**4) / (1 - 0.9**4)
    strategy = FedAdam(eta=1.0, tau=0.5, initial_v=0.0, bias_correction=True)
    assert step(strategy, round=3) == pytest.approx(eta_3 * 0.1 / 0.6)


def test_the_flower_strategies_turn_flowers_formulas_on() -> None:
    adagrad = FlowerFedAdagrad(eta=1.0, tau=0.5)
    assert (adagrad.beta_1, adagrad.initial_v) == (0.0, 0.0)
    assert step(adagrad) == pytest.approx(2 / 3)
    adam = FlowerFedAdam(eta=1.0, tau=0.5)
    assert adam.bias_correction and adam.initial_v == 0.0
    yogi = FlowerFedYogi(eta=1.0, tau=0.5)
    # Yogi from v = 0: v = 0 - 0.01 * 1 * sign(0 - 1) = 0.01; m = 0.1
    assert step(yogi) == pytest.approx(0.1 / (0.1 + 0.5))


def test_the_defaults_are_unchanged() -> None:
    for strategy in (FedAdam(), FedYogi(), FedAdagrad()):
        assert strategy.initial_v == strategy.tau**2
    assert not FedAdam().bias_correction


@pytest.mark.parametrize("bad", [-1.0, math.nan])
def test_initial_v_must_be_a_number_at_least_zero(bad: float) -> None:
    with pytest.raises(ValueError, match="initial_v must be a number >= 0"):
        FedAdam(initial_v=bad)
