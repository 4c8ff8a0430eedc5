"""DP-FedAvg: clipped, noised, equal-weight mean; adaptive clipping; the budget stop."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from pollinate import Arrays, Client, Config, FedAvg, Krum, Metrics, ServerApp, run_simulation
from pollinate.dp import (
    CLIPPING_NORM_KEY,
    NORM_BELOW_KEY,
    AdaptiveClipping,
    DifferentialPrivacy,
    epsilon,
)
from pollinate.strategy import FedBuff, FitResult, Sampling, Strategy


def aggregate(strategy: Strategy, updates: list[np.ndarray], current: np.ndarray) -> np.ndarray:
    aggregator = strategy.start_fit(1, Arrays({"w": current}))
    for k, update in enumerate(updates):
        aggregator.add(FitResult(k, Arrays({"w": current + update}), 10 * k + 1, {}))
    return aggregator.finish()["w"]


def test_with_tiny_noise_and_a_huge_bound_it_is_the_unweighted_mean() -> None:
    dp = DifferentialPrivacy(FedAvg(), noise_multiplier=1e-12, clipping_norm=1e6, noise_seed=1)
    updates = [np.array([1.0, 2.0]), np.array([3.0, -2.0]), np.array([5.0, 3.0])]
    current = np.array([10.0, 10.0])
    # equal weights: the clients' example counts (1, 11, 21) do not matter
    np.testing.assert_allclose(aggregate(dp, updates, current), [13.0, 11.0], atol=1e-6)


def test_each_update_is_clipped_before_it_is_averaged() -> None:
    dp = DifferentialPrivacy(FedAvg(), noise_multiplier=1e-12, clipping_norm=1.0, noise_seed=1)
    updates = [np.array([3.0, 4.0]), np.array([0.0, 0.5]), np.zeros(2)]
    # (0.6, 0.8), (0, 0.5) within the bound, and the zero update: mean (0.2, 0.4333)
    got = aggregate(dp, updates, np.zeros(2))
    np.testing.assert_allclose(got, [0.6 / 3, 1.3 / 3], atol=1e-9)


def test_the_noise_on_the_mean_has_std_z_times_c_over_n() -> None:
    z, c, n = 1.5, 2.0, 4
    dp = DifferentialPrivacy(FedAvg(), noise_multiplier=z, clipping_norm=c, noise_seed=7)
    noise = aggregate(dp, [np.zeros(2000)] * n, np.zeros(2000))
    assert noise.std() == pytest.approx(z * c / n, rel=0.05)
    assert abs(noise.mean()) < 4 * z * c / n / np.sqrt(2000)


def test_the_noise_differs_between_rounds_and_runs_without_a_seed() -> None:
    dp = DifferentialPrivacy(FedAvg(), noise_multiplier=1.0, clipping_norm=1.0)
    first = aggregate(dp, [np.zeros(4)] * 2, np.zeros(4))
    assert not np.array_equal(first, aggregate(dp, [np.zeros(4)] * 2, np.zeros(4)))


def test_the_inner_strategy_applies_its_server_update() -> None:
    class Halfway(FedAvg):
        def server_update(self, current: Arrays, mean: Arrays) -> Arrays:
            return Arrays({n: (current[n] + mean[n]) / 2 for n in current})

    dp = DifferentialPrivacy(Halfway(), noise_multiplier=1e-12, clipping_norm=1e6, noise_seed=0)
    got = aggregate(dp, [np.full(2, 4.0)], np.zeros(2))
    np.testing.assert_allclose(got, [2.0, 2.0], atol=1e-5)


def adaptive_dp(initial: float) -> DifferentialPrivacy:
    adaptive = AdaptiveClipping(initial_norm=initial, count_stddev=1e-3, learning_rate=0.2)
    return DifferentialPrivacy(FedAvg(), noise_multiplier=1e-3, adaptive=adaptive, noise_seed=3)


@pytest.mark.parametrize("initial", [0.5, 100.0])
def test_adaptive_clipping_moves_the_bound_to_the_target_quantile(initial: float) -> None:
    # ten clients with update norms 1..10: the median lies between 5 and 6
    updates = [np.array([float(k), 0.0]) for k in range(1, 11)]
    dp = adaptive_dp(initial)
    for _ in range(150):
        aggregate(dp, updates, np.zeros(2))
    assert 4.5 < dp.clipping_norm < 6.6


def test_one_adaptive_step_is_the_geometric_update() -> None:
    dp = adaptive_dp(2.5)
    updates = [np.array([float(k), 0.0]) for k in (1, 2, 3, 4)]  # half within 2.5
    aggregate(dp, updates, np.zeros(2))
    assert dp.clipping_norm == pytest.approx(2.5, rel=1e-3)  # b = 0.5: no move
    dp = adaptive_dp(1.5)  # one of four within: C exp(-0.2 (0.25 - 0.5))
    aggregate(dp, updates, np.zeros(2))
    assert dp.clipping_norm == pytest.approx(1.5 * np.exp(0.05), rel=1e-3)


def test_adaptive_clipping_spends_part_of_the_noise_on_the_count() -> None:
    adaptive = AdaptiveClipping(initial_norm=1.0, count_stddev=1.0)
    dp = DifferentialPrivacy(FedAvg(), noise_multiplier=1.0, adaptive=adaptive)
    # Andrew et al. 2021, Thm. 1: z_Delta = (z^-2 - (2 sigma_b)^-2)^(-1/2)
    assert dp.update_noise == pytest.approx((1 - 0.25) ** -0.5)


def test_client_side_sends_the_bound_and_counts_the_reported_bits() -> None:
    adaptive = AdaptiveClipping(initial_norm=1.0, count_stddev=1e-3)
    dp = DifferentialPrivacy(
        FedAvg(), noise_multiplier=1e-3, adaptive=adaptive, side="client", noise_seed=0
    )
    assert dp.configure_fit(1)[CLIPPING_NORM_KEY] == 1.0
    aggregator = dp.start_fit(1, Arrays({"w": np.zeros(1)}))
    for k in range(4):  # clipped by the clients, so all at the bound; all were above it
        aggregator.add(FitResult(k, Arrays({"w": np.ones(1)}), 5, {NORM_BELOW_KEY: 0}))
    aggregator.finish()
    assert dp.clipping_norm == pytest.approx(np.exp(0.1), rel=1e-3)  # b = 0: grows


def test_hub_side_sends_no_bound() -> None:
    dp = DifferentialPrivacy(FedAvg(), noise_multiplier=1.0, clipping_norm=1.0)
    assert CLIPPING_NORM_KEY not in dp.configure_fit(1)


def test_the_bits_are_not_published_in_the_fit_metrics() -> None:
    dp = DifferentialPrivacy(FedAvg(), noise_multiplier=1.0, clipping_norm=0.5)
    metrics = dp.aggregate_fit_metrics([(3, {NORM_BELOW_KEY: 1, "loss": 0.5})])
    assert NORM_BELOW_KEY not in metrics and metrics["loss"] == 0.5
    assert metrics["dp_clipping_norm"] == 0.5 and metrics["dp_epsilon"] == 0.0


def test_state_round_trips() -> None:
    adaptive = AdaptiveClipping(initial_norm=1.0, count_stddev=1.0)
    dp = DifferentialPrivacy(FedAvg(), noise_multiplier=1.0, adaptive=adaptive, noise_seed=0)
    dp.sample_fit([1, 2, 3, 4], np.random.default_rng(0))
    aggregate(dp, [np.full(2, 9.0)] * 3, np.zeros(2))
    fresh = DifferentialPrivacy(FedAvg(), noise_multiplier=1.0, adaptive=adaptive)
    fresh.load_state(dp.state())
    assert fresh.clipping_norm == dp.clipping_norm != 1.0
    assert fresh.sampling_rates == dp.sampling_rates == [1.0]
    assert fresh.epsilon() == dp.epsilon() > 0


# --- in a run --------------------------------------------------------------------------------


class Step(Client):
    def fit(self, arrays: Arrays, config: Config) -> tuple[Arrays, int, Metrics]:
        return Arrays({"w": arrays["w"] + 1.0}), 4, {}


def run(strategy: Strategy, rounds: int = 10, clients: int = 4) -> list[dict[str, object]]:
    app = ServerApp(strategy, num_rounds=rounds, initial_arrays=Arrays({"w": np.zeros(3)}))
    result = run_simulation(app, lambda ctx: Step(), num_clients=clients, seed=0)
    return [dict(r.fit) for r in result.history.rounds[1:]]


def test_each_round_reports_the_epsilon_spent_so_far() -> None:
    dp = DifferentialPrivacy(
        FedAvg(sampling=Sampling(fraction_fit=0.5, fraction_evaluate=0)),
        noise_multiplier=1.2,
        clipping_norm=2.0,
    )
    fits = run(dp, rounds=5, clients=8)
    assert [f["dp_epsilon"] for f in fits] == [
        pytest.approx(epsilon(1.2, [0.5] * r, 1e-5), abs=1e-9) for r in range(1, 6)
    ]
    assert all(f["dp_clipping_norm"] == 2.0 and f["dp_delta"] == 1e-5 for f in fits)


def test_the_sampling_rate_is_the_real_one_not_fraction_fit() -> None:
    # 0.1 of 4 clients is 1, but min_fit_clients=2 samples 2: q = 0.5
    dp = DifferentialPrivacy(
        FedAvg(sampling=Sampling(fraction_fit=0.1, fraction_evaluate=0)),
        noise_multiplier=1.0,
        clipping_norm=1.0,
    )
    run(dp, rounds=2)
    assert dp.sampling_rates == [0.5, 0.5]


def test_the_run_stops_before_the_round_that_would_spend_past_the_budget(
    caplog: pytest.LogCaptureFixture,
) -> None:
    budget = (epsilon(2.0, [1.0] * 3, 1e-5) + epsilon(2.0, [1.0] * 4, 1e-5)) / 2
    dp = DifferentialPrivacy(
        FedAvg(sampling=Sampling(fraction_evaluate=0)),
        noise_multiplier=2.0,
        clipping_norm=1.0,
        epsilon_budget=budget,
    )
    app = ServerApp(dp, num_rounds=10, initial_arrays=Arrays({"w": np.zeros(3)}))
    with caplog.at_level(logging.INFO, logger="pollinate.loop"):
        result = run_simulation(app, lambda ctx: Step(), num_clients=4, seed=0)
    assert [r.round for r in result.history.rounds] == [0, 1, 2, 3]
    assert result.history.rounds[-1].fit["dp_epsilon"] <= budget  # type: ignore[operator]
    assert result.stopped is not None and result.stopped.startswith("privacy budget")
    assert "stops after round 3: privacy budget" in caplog.text


def test_a_budget_smaller_than_one_round_runs_no_round() -> None:
    dp = DifferentialPrivacy(
        FedAvg(sampling=Sampling(fraction_evaluate=0)),
        noise_multiplier=1.0,
        clipping_norm=1.0,
        epsilon_budget=0.01,
    )
    assert run(dp) == []


# --- refused -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"noise_multiplier": 0.0, "clipping_norm": 1.0}, "no differential privacy"),
        ({"noise_multiplier": -1.0, "clipping_norm": 1.0}, "noise_multiplier must be a number > 0"),
        ({"noise_multiplier": 1.0, "clipping_norm": 0.0}, "clipping norm must be"),
        ({"noise_multiplier": 1.0}, "exactly one of clipping_norm"),
        ({"noise_multiplier": 1.0, "clipping_norm": 1.0, "delta": 0.01}, "too large"),
        (
            {"noise_multiplier": 1.0, "clipping_norm": 1.0, "delta": 0.0},
            "delta must be a finite number in",
        ),
        ({"noise_multiplier": 1.0, "clipping_norm": 1.0, "epsilon_budget": 0}, "epsilon_budget"),
        ({"noise_multiplier": 1.0, "clipping_norm": 1.0, "side": "both"}, "side must be"),
        (
            {
                "noise_multiplier": 4.0,
                "adaptive": AdaptiveClipping(initial_norm=1.0, count_stddev=1.0),
            },
            "count_stddev=1.0 is too small",
        ),
    ],
)
def test_unsafe_or_impossible_settings_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DifferentialPrivacy(FedAvg(), **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target_quantile": 1.0}, "target_quantile must be in"),
        ({"target_quantile": 0.0}, "target_quantile must be in"),
        ({"learning_rate": 0.0}, "learning_rate must be > 0"),
        ({"count_stddev": 0.0}, "count_stddev must be > 0"),
        ({"initial_norm": -1.0}, "clipping norm must be"),
    ],
)
def test_bad_adaptive_settings_are_refused(kwargs: dict, message: str) -> None:
    settings = {"initial_norm": 1.0, "count_stddev": 1.0, **kwargs}
    with pytest.raises(ValueError, match=message):
        AdaptiveClipping(**settings)


@pytest.mark.parametrize(
    "inner", [Krum(num_malicious=1), FedBuff(buffer_size=2)], ids=["Krum", "FedBuff"]
)
def test_strategies_that_are_not_a_synchronous_mean_are_refused(inner: Strategy) -> None:
    with pytest.raises(TypeError, match="Hint: "):
        DifferentialPrivacy(inner, noise_multiplier=1.0, clipping_norm=1.0)
