"""The robust strategies as the run loop uses them: FedMedian, FedTrimmedAvg, Krum,
MultiKrum and Bulyan. The math is specified in tests/aggregate/test_robust.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from pollinate.aggregate import bulyan, coordinate_median, multi_krum, trimmed_mean
from pollinate.records import Arrays
from pollinate.strategy import (
    STRATEGIES,
    Bulyan,
    FedMedian,
    FedTrimmedAvg,
    FitResult,
    Krum,
    MultiKrum,
    Sampling,
    Strategy,
    strategy_class,
)
from pollinate.strategy.base import TooFewReplies


def model() -> Arrays:
    return Arrays({"w": np.zeros((2, 3), np.float32), "b": np.zeros(2)})


def honest(count: int, seed: int = 0) -> list[FitResult]:
    rng = np.random.default_rng(seed)
    return [
        FitResult(
            k + 1,
            Arrays({n: (1 + rng.random(a.shape)).astype(a.dtype) for n, a in model().items()}),
            10 + k,
            {},
        )
        for k in range(count)
    ]


def hostile(node_id: int) -> FitResult:
    return FitResult(
        node_id, Arrays({n: np.full(a.shape, -1e30, a.dtype) for n, a in model().items()}), 50, {}
    )


def aggregate(strategy: Strategy, results: list[FitResult]) -> Arrays:
    aggregator = strategy.start_fit(1, model())
    for result in results:
        aggregator.add(result)
    return aggregator.finish()


ROBUST: dict[str, tuple[Callable[[], Strategy], int]] = {
    "FedMedian": (FedMedian, 5),
    "FedTrimmedAvg": (lambda: FedTrimmedAvg(beta=0.2), 5),
    "Krum": (lambda: Krum(num_malicious=1), 5),
    "MultiKrum": (lambda: MultiKrum(num_malicious=1, num_selected=3), 5),
    "Bulyan": (lambda: Bulyan(num_malicious=1), 7),
}
every_robust = pytest.mark.parametrize(("make", "count"), ROBUST.values(), ids=ROBUST.keys())


# --- what they compute -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        (FedMedian(), lambda u, w: coordinate_median(u)),
        (FedTrimmedAvg(beta=0.2), lambda u, w: trimmed_mean(u, 0.2)),
        (Krum(num_malicious=1), lambda u, w: multi_krum(u, w, 1, 1)),
        (MultiKrum(num_malicious=1, num_selected=3), lambda u, w: multi_krum(u, w, 1, 3)),
        (Bulyan(num_malicious=1), lambda u, w: bulyan(u, 1)),
    ],
    ids=ROBUST.keys(),
)
def test_each_strategy_is_its_statistic_over_the_replies_in_node_order(
    strategy: Strategy, expected: Callable[..., Arrays]
) -> None:
    results = honest(7)
    updates, weights = [r.arrays for r in results], [r.num_examples for r in results]
    assert aggregate(strategy, results[::-1]) == expected(updates, weights)


@every_robust
def test_the_result_is_the_same_bit_for_bit_in_any_reply_order(
    make: Callable[[], Strategy], count: int
) -> None:
    results = honest(count, seed=5)
    rng = np.random.default_rng(0)
    for _ in range(5):
        shuffled = [results[i] for i in rng.permutation(count)]
        assert aggregate(make(), shuffled) == aggregate(make(), results)


@every_robust
def test_one_hostile_reply_does_not_drag_the_model_away(
    make: Callable[[], Strategy], count: int
) -> None:
    results = [*honest(count - 1), hostile(99)]
    got = aggregate(make(), results)
    for name, a in got.items():
        assert np.all((a >= 1) & (a <= 2)), name


def test_krum_takes_one_reply_as_it_is() -> None:
    results = [*honest(4), hostile(99)]
    got = aggregate(Krum(num_malicious=1), results)
    assert any(got == r.arrays for r in results[:4])


@every_robust
def test_replies_with_zero_examples_are_left_out(make: Callable[[], Strategy], count: int) -> None:
    results = honest(count)
    empty = [FitResult(100 + k, hostile(0).arrays, 0, {}) for k in range(count)]
    assert aggregate(make(), [*empty, *results]) == aggregate(make(), results)


# --- how many replies they need --------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "needed"),
    [
        (FedMedian, 1),
        (lambda: FedTrimmedAvg(beta=0.4), 1),
        (lambda: Krum(num_malicious=0), 3),
        (lambda: Krum(num_malicious=2), 7),
        (lambda: MultiKrum(num_malicious=1, num_selected=2), 5),
        (lambda: MultiKrum(num_malicious=1, num_selected=8), 8),
        (lambda: Bulyan(num_malicious=1), 7),
        (lambda: Bulyan(num_malicious=2), 11),
    ],
)
def test_min_fit_clients_defaults_to_the_replies_a_round_needs(
    make: Callable[[], Strategy], needed: int
) -> None:
    assert make().min_fit_clients == needed


def test_a_higher_min_fit_clients_is_kept() -> None:
    assert Bulyan(num_malicious=1, sampling=Sampling(min_fit_clients=10)).min_fit_clients == 10


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (
            lambda: Bulyan(num_malicious=1, sampling=Sampling(min_fit_clients=6)),
            r"n >= 4f \+ 3 .*at least 7",
        ),
        (
            lambda: Krum(num_malicious=1, sampling=Sampling(min_fit_clients=4)),
            r"n > 2f \+ 2 .*at least 5",
        ),
        (
            lambda: MultiKrum(
                num_malicious=0, num_selected=4, sampling=Sampling(min_fit_clients=3)
            ),
            "at least 4",
        ),
    ],
)
def test_a_min_fit_clients_too_low_for_the_strategy_is_refused(
    make: Callable[[], Strategy], match: str
) -> None:
    with pytest.raises(ValueError, match=match + r".*min_fit_clients=\d+.*\nHint: "):
        make()


def test_a_round_left_with_too_few_replies_tolerates_fewer_malicious_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # as when validation quarantined some of the round's updates
    with caplog.at_level("WARNING", logger="pollinate.strategy"):
        bulyan_result = aggregate(Bulyan(num_malicious=1), honest(6))  # needs 7 for f=1
        krum_result = aggregate(Krum(num_malicious=1), honest(4))  # needs 5 for f=1
    assert bulyan_result.names == krum_result.names
    assert "Bulyan: 6 updates tolerate at most f=0 malicious clients" in caplog.text
    assert "Krum: 4 updates tolerate at most f=0 malicious clients" in caplog.text


def test_a_round_with_too_few_replies_for_any_guarantee_is_too_few() -> None:
    with pytest.raises(TooFewReplies, match=r"got 2 usable replies .*\nHint: "):
        aggregate(Bulyan(num_malicious=1), honest(2))


# --- arguments -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "kwargs", "error"),
    [
        (FedTrimmedAvg, {"beta": 0.5}, ValueError),
        (FedTrimmedAvg, {"beta": -0.1}, ValueError),
        (FedTrimmedAvg, {"beta": float("nan")}, ValueError),
        (FedTrimmedAvg, {"beta": "0.1"}, TypeError),
        (FedTrimmedAvg, {"beta": True}, TypeError),
        (Krum, {"num_malicious": -1}, ValueError),
        (Krum, {"num_malicious": 1.0}, TypeError),
        (Krum, {"num_malicious": True}, TypeError),
        (MultiKrum, {"num_malicious": 1, "num_selected": 0}, ValueError),
        (MultiKrum, {"num_malicious": 1, "num_selected": "3"}, TypeError),
        (Bulyan, {"num_malicious": -2}, ValueError),
        (Bulyan, {"num_malicious": None}, TypeError),
    ],
)
def test_impossible_arguments_are_refused_with_a_hint(
    make: Callable[..., Strategy], kwargs: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error, match=r"\nHint: "):
        make(**kwargs)


def test_krum_and_bulyan_need_num_malicious_said_out_loud() -> None:
    with pytest.raises(TypeError, match="num_malicious"):
        Krum()  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="num_malicious"):
        Bulyan()  # type: ignore[call-arg]


def test_the_base_strategy_arguments_still_apply() -> None:
    strategy = FedMedian(failure_tolerance=0.1, sampling=Sampling(fraction_fit=0.25))
    assert (strategy.sampling.fraction_fit, strategy.failure_tolerance) == (0.25, 0.1)
    with pytest.raises(ValueError, match="fraction_fit"):
        FedMedian(sampling=Sampling(fraction_fit=2.0))


# --- names -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("fedmedian", FedMedian),
        ("FedTrimmedAvg", FedTrimmedAvg),
        ("krum", Krum),
        ("MultiKrum", MultiKrum),
        ("bulyan", Bulyan),
    ],
)
def test_a_config_can_name_each_robust_strategy(name: str, cls: type[Strategy]) -> None:
    assert strategy_class(name) is cls
    assert STRATEGIES[name.lower()] is cls
