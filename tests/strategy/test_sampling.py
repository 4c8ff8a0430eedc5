"""Whom a strategy samples each round, the checks on its constructor, and per-round config."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from pollinate.errors import RunError
from pollinate.strategy import FedAvg, FedProx, Sampling, Strategy

node_ids = st.lists(st.integers(0, 2**40), min_size=1, max_size=120, unique=True)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# --- how many ------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    available=node_ids,
    percent=st.integers(0, 100),
    min_fit=st.integers(0, 10),
    min_available=st.integers(0, 10),
)
def test_sample_size_is_max_of_ceil_fraction_min_and_one(
    available: list[int], percent: int, min_fit: int, min_available: int
) -> None:
    n = len(available)
    # integer arithmetic for ceil(percent / 100 * n): no float rounding in the expectation
    wanted = max(-(-percent * n // 100), min_fit, 1)
    assume(n >= max(wanted, min_available))
    strategy = Strategy(
        sampling=Sampling(
            fraction_fit=percent / 100, min_fit_clients=min_fit, min_available_clients=min_available
        )
    )
    assert len(strategy.sample_fit(available, rng())) == wanted


@pytest.mark.parametrize(
    ("fraction", "n", "expected"),
    [
        (0.5, 10, 5),
        (0.5, 11, 6),  # ceil, not floor
        (0.01, 10, 2),  # ceil(0.1) = 1, but at least min_fit_clients = 2
        (0.0, 10, 2),
        (1.0, 7, 7),
        (0.14, 50, 7),  # 0.14 * 50 is 7.000000000000001 in floats; the user means 7
        (0.28, 25, 7),
        (0.1, 30, 3),
    ],
)
def test_sample_size_hand_cases(fraction: float, n: int, expected: int) -> None:
    strategy = FedAvg(
        sampling=Sampling(fraction_fit=fraction, min_fit_clients=2, min_available_clients=2)
    )
    assert len(strategy.sample_fit(range(n), rng())) == expected


def test_at_least_one_client_is_sampled_even_when_every_minimum_is_zero() -> None:
    strategy = FedAvg(
        sampling=Sampling(
            fraction_fit=0.0,
            fraction_evaluate=0.01,
            min_fit_clients=0,
            min_evaluate_clients=0,
            min_available_clients=0,
        )
    )
    assert len(strategy.sample_fit([4, 9], rng())) == 1
    assert len(strategy.sample_evaluate([4, 9], rng())) == 1


def test_evaluate_uses_its_own_fraction_and_minimum() -> None:
    strategy = FedAvg(
        sampling=Sampling(fraction_fit=1.0, fraction_evaluate=0.25, min_evaluate_clients=3)
    )
    assert len(strategy.sample_fit(range(20), rng())) == 20
    assert len(strategy.sample_evaluate(range(20), rng())) == 5
    assert len(strategy.sample_evaluate(range(8), rng())) == 3


def test_fraction_evaluate_zero_turns_federated_evaluation_off() -> None:
    strategy = FedAvg(
        sampling=Sampling(fraction_evaluate=0.0, min_evaluate_clients=5, min_available_clients=5)
    )
    assert strategy.sample_evaluate(range(100), rng()) == []
    assert strategy.sample_evaluate([], rng()) == []  # not even "too few available"


# --- which ---------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(available=node_ids, percent=st.integers(0, 100), seed=st.integers(0, 2**32 - 1))
def test_the_sample_is_sorted_unique_and_drawn_from_the_available_nodes(
    available: list[int], percent: int, seed: int
) -> None:
    strategy = FedAvg(
        sampling=Sampling(fraction_fit=percent / 100, min_fit_clients=1, min_available_clients=1)
    )
    chosen = strategy.sample_fit(available, rng(seed))
    assert chosen == sorted(set(chosen))
    assert set(chosen) <= set(available)
    assert all(type(i) is int for i in chosen)


@settings(max_examples=50, deadline=None)
@given(available=node_ids, seed=st.integers(0, 2**32 - 1), data=st.data())
def test_the_sample_is_determined_by_the_generator_seed_not_the_order_of_nodes(
    available: list[int], seed: int, data: st.DataObject
) -> None:
    strategy = FedAvg(
        sampling=Sampling(fraction_fit=0.3, min_fit_clients=1, min_available_clients=1)
    )
    shuffled = data.draw(st.permutations(available))
    assert strategy.sample_fit(available, rng(seed)) == strategy.sample_fit(shuffled, rng(seed))


def test_different_seeds_pick_different_clients() -> None:
    strategy = FedAvg(sampling=Sampling(fraction_fit=0.1))
    samples = {tuple(strategy.sample_fit(range(1000), rng(seed))) for seed in range(5)}
    assert len(samples) == 5


def test_every_available_client_can_be_picked() -> None:
    strategy = FedAvg(
        sampling=Sampling(fraction_fit=0.2, min_fit_clients=1, min_available_clients=1)
    )
    seen = set()
    for seed in range(200):
        seen.update(strategy.sample_fit(range(10), rng(seed)))
    assert seen == set(range(10))


# --- too few clients -----------------------------------------------------------------------


def test_too_few_for_the_minimum_fit_clients_raises_run_error_with_the_numbers() -> None:
    strategy = FedAvg(sampling=Sampling(min_fit_clients=5, min_available_clients=2))
    with pytest.raises(RunError) as caught:
        strategy.sample_fit([1, 2, 3], rng())
    message = str(caught.value)
    assert "needs 5 clients for fit but only 3 are available" in message
    assert "Hint:" in message and "min_fit_clients" in message


def test_too_few_available_clients_raises_run_error_with_the_numbers() -> None:
    strategy = FedAvg(
        sampling=Sampling(min_fit_clients=1, min_evaluate_clients=1, min_available_clients=4)
    )
    with pytest.raises(RunError, match="needs 4 clients for evaluate but only 2 are available"):
        strategy.sample_evaluate([1, 2], rng())
    with pytest.raises(RunError, match="Hint:"):
        strategy.sample_fit([1, 2], rng())


def test_no_clients_at_all_raises_run_error() -> None:
    strategy = FedAvg(sampling=Sampling(min_fit_clients=0, min_available_clients=0))
    with pytest.raises(RunError, match="needs 1 clients for fit but only 0 are available"):
        strategy.sample_fit([], rng())


# --- constructor checks --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["fraction_fit", "fraction_evaluate", "failure_tolerance"])
@pytest.mark.parametrize("value", [-0.1, 1.5, math.nan, math.inf, True, "0.5", None])
def test_fractions_outside_zero_to_one_are_rejected_showing_the_value(
    name: str, value: object
) -> None:
    wording = f"{name} must be a finite number in [0, 1], got {value!r}"
    with pytest.raises((TypeError, ValueError), match=re.escape(wording)):
        _with(name, value)


@pytest.mark.parametrize("name", ["fraction_fit", "fraction_evaluate", "failure_tolerance"])
@pytest.mark.parametrize("value", [0, 0.0, 0.5, 1, 1.0])
def test_fractions_at_and_inside_the_bounds_are_accepted(name: str, value: float) -> None:
    strategy = _with(name, value)
    holder = strategy if name == "failure_tolerance" else strategy.sampling
    assert getattr(holder, name) == value


def _with(name: str, value: object) -> FedAvg:
    """FedAvg with one option set: a sampling option in its Sampling, or its own."""
    if name == "failure_tolerance":
        return FedAvg(failure_tolerance=value)  # type: ignore[arg-type]
    return FedAvg(sampling=Sampling(**{name: value}))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "name", ["min_fit_clients", "min_evaluate_clients", "min_available_clients"]
)
@pytest.mark.parametrize("value", [-1, False, True, 2.0, "2"])
def test_client_minimums_must_be_non_negative_ints(name: str, value: object) -> None:
    wording = f"{name} must be an int >= 0, got {value!r}"
    with pytest.raises((TypeError, ValueError), match=re.escape(wording)):
        Sampling(**{name: value})  # type: ignore[arg-type]


def test_only_the_minimums_with_a_default_may_be_none() -> None:
    assert Sampling(min_fit_clients=None, min_available_clients=None).min_fit_clients is None
    with pytest.raises(TypeError, match="min_evaluate_clients must be an int >= 0, got None"):
        Sampling(min_evaluate_clients=None)  # type: ignore[arg-type]


def test_misspelt_sampling_options_fail_at_once() -> None:
    with pytest.raises(TypeError, match="fraction_fitt"):
        Sampling(fraction_fitt=0.5)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="fraction_fit"):
        FedAvg(fraction_fit=0.5)  # type: ignore[call-arg]


def test_left_out_minimums_are_the_strategys_own() -> None:
    assert FedAvg().sampling.min_fit_clients == 2
    assert FedAvg(sampling=Sampling(min_fit_clients=1)).sampling.min_fit_clients == 1
    assert FedAvg().sampling.min_available_clients == 2


def test_fedprox_rejects_a_negative_mu() -> None:
    with pytest.raises(
        ValueError, match=re.escape("proximal_mu must be a finite number >= 0, got -0.5")
    ):
        FedProx(proximal_mu=-0.5)


# --- per-round config ----------------------------------------------------------------------


def test_configure_fit_and_evaluate_call_the_users_functions_with_the_round() -> None:
    strategy = FedAvg(
        on_fit_config_fn=lambda rnd: {"lr": 0.1 / rnd, "epochs": 2},
        on_evaluate_config_fn=lambda rnd: {"batch": 32 * rnd},
    )
    assert strategy.configure_fit(2) == {"lr": 0.05, "epochs": 2}
    assert strategy.configure_evaluate(3) == {"batch": 96}


def test_without_config_functions_the_config_is_empty() -> None:
    assert FedAvg().configure_fit(1) == {} and FedAvg().configure_evaluate(1) == {}


def test_the_config_is_a_fresh_dict_each_round() -> None:
    shared = {"lr": 0.1}
    strategy = FedAvg(on_fit_config_fn=lambda rnd: shared)
    strategy.configure_fit(1)["lr"] = 99.0
    assert shared == {"lr": 0.1}


def test_fedprox_sends_proximal_mu_and_keeps_the_users_entries() -> None:
    strategy = FedProx(proximal_mu=0.1, on_fit_config_fn=lambda rnd: {"epochs": rnd, "lr": 0.01})
    assert strategy.configure_fit(3) == {"epochs": 3, "lr": 0.01, "proximal_mu": 0.1}


def test_fedprox_sends_proximal_mu_without_a_config_function() -> None:
    config = FedProx(proximal_mu=1).configure_fit(1)
    assert config == {"proximal_mu": 1.0} and type(config["proximal_mu"]) is float


def test_fedprox_evaluate_config_has_no_proximal_mu() -> None:
    assert FedProx(proximal_mu=0.1).configure_evaluate(1) == {}


def test_a_population_given_as_a_range_is_never_listed() -> None:
    # a trillion virtual clients: listing them would need terabytes, so this samples in place
    strategy = FedAvg(sampling=Sampling(fraction_fit=1e-9))
    chosen = strategy.sample_fit(range(10**12), rng(4))
    assert len(chosen) == 1000 and len(set(chosen)) == 1000
    assert all(0 <= node < 10**12 for node in chosen) and chosen == sorted(chosen)


@given(n=st.integers(1, 3000), seed=st.integers(0, 2**32 - 1), data=st.data())
def test_a_range_and_the_same_nodes_listed_in_any_order_give_the_same_sample(
    n: int, seed: int, data: st.DataObject
) -> None:
    strategy = FedAvg(sampling=Sampling(fraction_fit=0.3, min_fit_clients=1))
    shuffled = data.draw(st.permutations(list(range(n))))
    assert strategy.sample_fit(range(n), rng(seed)) == strategy.sample_fit(shuffled, rng(seed))
