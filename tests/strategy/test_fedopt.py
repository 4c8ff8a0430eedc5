"""Server optimizers as strategies: FedAvgM (Hsu et al. 2019) and FedAdagrad / FedAdam /
FedYogi (Reddi et al. 2021, Algorithm 2), checked round by round against the paper's formulas
written out here in plain numpy, with the optimizer state carried between rounds."""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np
import pytest

from pollinate.records import Arrays
from pollinate.strategy import (
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedOpt,
    FedYogi,
    FitResult,
    Strategy,
)

X0 = np.array([1.0, -2.0, 0.5])
MEANS = [
    np.array([2.0, -1.0, 0.5]),  # large change; third entry unchanged (delta = 0)
    np.array([2.1, -1.5, 0.0]),
    np.array([1.9, -1.4, 0.2]),  # small change: Yogi's v shrinks where v > delta^2
]


def run_rounds(strategy: Strategy, x0: np.ndarray, means: list[np.ndarray]) -> list[np.ndarray]:
    """Feed ``means`` to ``strategy.server_update`` round after round, as the run loop does."""
    current, out = Arrays({"w": x0}), []
    for mean in means:
        current = strategy.server_update(current, Arrays({"w": mean}))
        out.append(current["w"])
    return out


def run_rounds_through_replies(
    strategy: Strategy, x0: np.ndarray, means: list[np.ndarray]
) -> list[np.ndarray]:
    """Same, but through start_fit/add/finish with two replies whose weighted mean is ``mean``:
    ``(1 * (mean - 3d) + 3 * (mean + d)) / 4 = mean``."""
    current, out = Arrays({"w": x0}), []
    d = np.array([0.5, -0.25, 1.0])
    for rnd, mean in enumerate(means, start=1):
        aggregator = strategy.start_fit(rnd, current)
        aggregator.add(FitResult(1, Arrays({"w": mean - 3 * d}), 1, {}))
        aggregator.add(FitResult(2, Arrays({"w": mean + d}), 3, {}))
        current = aggregator.finish()
        out.append(current["w"])
    return out


def reference_fedopt(
    rule: str,
    x0: np.ndarray,
    means: list[np.ndarray],
    eta: float,
    beta_1: float,
    beta_2: float,
    tau: float,
) -> list[np.ndarray]:
    """Reddi et al. 2021, Algorithm 2, with m_0 = 0 and v_0 = tau^2."""
    x = x0.astype(np.float64)
    m = np.zeros_like(x)
    v = np.full_like(x, tau**2)
    out = []
    for mean in means:
        delta = mean - x
        m = beta_1 * m + (1 - beta_1) * delta
        if rule == "adagrad":
            v = v + delta**2
        elif rule == "adam":
            v = beta_2 * v + (1 - beta_2) * delta**2
        else:  # yogi
            v = v - (1 - beta_2) * delta**2 * np.sign(v - delta**2)
        x = x + eta * m / (np.sqrt(v) + tau)
        out.append(x.copy())
    return out


def reference_fedavgm(
    x0: np.ndarray, means: list[np.ndarray], lr: float, momentum: float
) -> list[np.ndarray]:
    """Hsu et al. 2019: v = momentum * v + (x - mean); x = x - lr * v, with v_0 = 0."""
    x, v, out = x0.astype(np.float64), np.zeros_like(x0, dtype=np.float64), []
    for mean in means:
        v = momentum * v + (x - mean)
        x = x - lr * v
        out.append(x.copy())
    return out


FEDOPT = {"adagrad": FedAdagrad, "adam": FedAdam, "yogi": FedYogi}
HYPER = {"eta": 0.3, "beta_1": 0.9, "beta_2": 0.99, "tau": 0.1}


# --- FedOpt family ---------------------------------------------------------------------------


@pytest.mark.parametrize("rule", FEDOPT)
def test_three_rounds_follow_algorithm_2_with_state_carried(rule: str) -> None:
    got = run_rounds(FEDOPT[rule](**HYPER), X0, MEANS)
    expected = reference_fedopt(rule, X0, MEANS, **HYPER)
    for rnd, (g, e) in enumerate(zip(got, expected, strict=True), start=1):
        np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-12, err_msg=f"round {rnd}")


@pytest.mark.parametrize("rule", FEDOPT)
def test_the_run_loop_path_gives_the_same_rounds_as_server_update(rule: str) -> None:
    got = run_rounds_through_replies(FEDOPT[rule](**HYPER), X0, MEANS)
    expected = reference_fedopt(rule, X0, MEANS, **HYPER)
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("rule", FEDOPT)
def test_default_hyperparameters_follow_algorithm_2(rule: str) -> None:
    strategy = FEDOPT[rule]()
    assert (strategy.eta, strategy.beta_1, strategy.beta_2, strategy.tau) == (0.1, 0.9, 0.99, 1e-9)
    expected = reference_fedopt(rule, X0, MEANS, eta=0.1, beta_1=0.9, beta_2=0.99, tau=1e-9)
    for g, e in zip(run_rounds(strategy, X0, MEANS), expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-9)


def test_fedadagrad_first_round_by_hand() -> None:
    # delta = 1.4 - 1 = 0.4; m = 0.5 * 0.4 = 0.2; v = 0.3^2 + 0.4^2 = 0.25;
    # x = 1 + 1.0 * 0.2 / (sqrt(0.25) + 0.3) = 1 + 0.2 / 0.8 = 1.25
    strategy = FedAdagrad(eta=1.0, beta_1=0.5, tau=0.3)
    (x1,) = run_rounds(strategy, np.array([1.0]), [np.array([1.4])])
    np.testing.assert_allclose(x1, [1.25], rtol=1e-12)


def test_float32_models_stay_float32_and_the_moments_are_float64() -> None:
    strategy = FedAdam(**HYPER)
    out = run_rounds(strategy, X0.astype(np.float32), [m.astype(np.float32) for m in MEANS])
    assert all(x.dtype == np.float32 for x in out)
    assert all(a.dtype == np.float64 for a in strategy.state().values())
    expected = reference_fedopt("adam", X0, MEANS, **HYPER)
    np.testing.assert_allclose(out[-1], expected[-1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"eta": 0.0},
        {"eta": -1.0},
        {"tau": 0.0},
        {"beta_1": 1.0},
        {"beta_1": -0.1},
        {"beta_2": 1.0},
        {"eta": float("nan")},
        {"tau": float("nan")},
        {"beta_1": float("nan")},
    ],
)
def test_impossible_hyperparameters_are_rejected(kwargs: dict[str, float]) -> None:
    ((name, value),) = kwargs.items()
    with pytest.raises(ValueError, match=re.escape(f"{name}={value!r}")):
        FedAdam(**kwargs)


def test_fedopt_itself_has_no_second_moment_rule() -> None:
    with pytest.raises(NotImplementedError):
        run_rounds(FedOpt(), X0, MEANS[:1])


# --- FedAvgM ---------------------------------------------------------------------------------


def test_fedavgm_with_lr_one_and_no_momentum_is_fedavg() -> None:
    fedavgm = run_rounds_through_replies(
        FedAvgM(server_learning_rate=1.0, server_momentum=0.0), X0, MEANS
    )
    fedavg = run_rounds_through_replies(FedAvg(), X0, MEANS)
    for a, b in zip(fedavgm, fedavg, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(fedavg[-1], MEANS[-1], atol=1e-12)


def test_fedavgm_three_rounds_by_hand() -> None:
    # x0 = 10, momentum 0.5, lr 1:
    # r1: v = 0 + (10 - 8) = 2      -> x = 8
    # r2: v = 1 + (8 - 7) = 2       -> x = 6
    # r3: v = 1 + (6 - 6) = 1       -> x = 5   (momentum carries past the clients' mean)
    strategy = FedAvgM(server_learning_rate=1.0, server_momentum=0.5)
    means = [np.array([8.0]), np.array([7.0]), np.array([6.0])]
    got = run_rounds(strategy, np.array([10.0]), means)
    assert [float(x[0]) for x in got] == [8.0, 6.0, 5.0]


def test_fedavgm_follows_hsu_et_al_over_three_rounds() -> None:
    strategy = FedAvgM(server_learning_rate=0.7, server_momentum=0.9)
    got = run_rounds(strategy, X0, MEANS)
    expected = reference_fedavgm(X0, MEANS, lr=0.7, momentum=0.9)
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-12)


def test_fedavgm_keeps_float32_models_float32() -> None:
    strategy = FedAvgM(server_learning_rate=0.7, server_momentum=0.9)
    out = run_rounds(strategy, X0.astype(np.float32), [m.astype(np.float32) for m in MEANS])
    assert all(x.dtype == np.float32 for x in out)
    np.testing.assert_allclose(out[-1], reference_fedavgm(X0, MEANS, 0.7, 0.9)[-1], rtol=1e-5)


# --- state() / load_state() ------------------------------------------------------------------

STATEFUL: dict[str, Callable[[], Strategy]] = {
    "FedAvgM": lambda: FedAvgM(server_learning_rate=0.7, server_momentum=0.9),
    "FedAdagrad": lambda: FedAdagrad(**HYPER),
    "FedAdam": lambda: FedAdam(**HYPER),
    "FedYogi": lambda: FedYogi(**HYPER),
}


def copied(state: Arrays) -> Arrays:
    """What comes back from a checkpoint: equal arrays, no shared objects."""
    return Arrays({name: np.array(a, copy=True) for name, a in state.items()})


@pytest.mark.parametrize("make", STATEFUL.values(), ids=STATEFUL.keys())
def test_a_strategy_restored_from_state_continues_identically(
    make: Callable[[], Strategy],
) -> None:
    original = make()
    current = Arrays({"w": run_rounds(original, X0, MEANS[:2])[-1]})

    restored = make()
    restored.load_state(copied(original.state()))
    later = [MEANS[2], MEANS[0], MEANS[1]]
    a = run_rounds(original, current["w"], later)
    b = run_rounds(restored, current["w"], later)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("make", STATEFUL.values(), ids=STATEFUL.keys())
def test_a_fresh_strategy_does_not_continue_like_a_restored_one(
    make: Callable[[], Strategy],
) -> None:
    # guards the test above: the state really matters for the next round
    original = make()
    current = run_rounds(original, X0, MEANS[:2])[-1]
    (continued,) = run_rounds(original, current, MEANS[2:])
    (fresh,) = run_rounds(make(), current, MEANS[2:])
    assert not np.allclose(continued, fresh)


@pytest.mark.parametrize("make", STATEFUL.values(), ids=STATEFUL.keys())
def test_state_is_empty_before_the_first_round_and_round_trips(
    make: Callable[[], Strategy],
) -> None:
    strategy = make()
    assert len(strategy.state()) == 0
    run_rounds(strategy, X0, MEANS[:1])
    state = strategy.state()
    assert len(state) > 0
    other = make()
    other.load_state(copied(state))
    assert other.state() == state


def test_fedavg_carries_no_state() -> None:
    strategy = FedAvg()
    run_rounds(strategy, X0, MEANS)
    assert len(strategy.state()) == 0
    strategy.load_state(Arrays())  # accepted, a no-op


@pytest.mark.parametrize("mu", [-0.1, float("nan"), float("inf"), True])
def test_fedprox_refuses_a_proximal_mu_that_is_not_a_finite_non_negative_number(
    mu: float,
) -> None:
    from pollinate.strategy import FedProx

    with pytest.raises((TypeError, ValueError), match="proximal_mu must be a finite number >= 0"):
        FedProx(proximal_mu=mu)
