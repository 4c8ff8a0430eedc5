"""Checks every strategy passes, used the way the run loop uses it:
``start_fit(round, current)``, then ``add(FitResult)`` per reply as it arrives, then
``finish()`` for the next global arrays."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pollinate.dp import DifferentialPrivacy
from pollinate.records import Arrays
from pollinate.strategy import (
    Bulyan,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    FitAggregator,
    FitResult,
    Krum,
    MultiKrum,
    QFedAvg,
    Strategy,
)

LOSS_KEY = "loss_before"


@dataclass(frozen=True)
class Case:
    """A strategy as the suite makes it, and how many replies a round gives it: Krum and
    Bulyan need enough replies for ``num_malicious`` (2f + 3 and 4f + 3)."""

    make: Callable[[], Strategy]
    count: int = 5


CASES: dict[str, Case] = {
    "FedAvg": Case(FedAvg),
    "FedProx": Case(lambda: FedProx(proximal_mu=0.1)),
    "FedAvgM": Case(FedAvgM),
    "FedAdagrad": Case(FedAdagrad),
    "FedAdam": Case(FedAdam),
    "FedYogi": Case(FedYogi),
    "FedMedian": Case(FedMedian),
    "FedTrimmedAvg": Case(lambda: FedTrimmedAvg(beta=0.2)),
    "Krum": Case(lambda: Krum(num_malicious=1)),
    "MultiKrum": Case(lambda: MultiKrum(num_malicious=1, num_selected=3)),
    "Bulyan": Case(lambda: Bulyan(num_malicious=1), count=7),
    "QFedAvg": Case(lambda: QFedAvg(q=0.5, lipschitz=10.0)),
    "QFedAvg-q0": Case(lambda: QFedAvg(q=0.0, lipschitz=10.0)),
    # noise small enough for the checks' tolerance, seeded so that two runs draw the same;
    # an equal-weight mean, so not in MEAN (which weighs by examples)
    "DP-FedAvg": Case(
        lambda: DifferentialPrivacy(
            FedAvg(), noise_multiplier=1e-12, clipping_norm=1e6, noise_seed=0
        )
    ),
}

# Whose result is a statistic of the replies, so that equal replies give that reply. Not
# FedOpt's: its server optimizer steps eta m / (sqrt(v) + tau) towards them. Not q-FedAvg's
# with q > 0: its step shrinks by 1 / (1 + q ||L (w - w_k)||^2 / (L F_k)).
LOCATION = [
    "FedAvg",
    "FedProx",
    "FedAvgM",
    "FedMedian",
    "FedTrimmedAvg",
    "Krum",
    "MultiKrum",
    "Bulyan",
    "QFedAvg-q0",
    "DP-FedAvg",
]

# Whose result is a mean of the replies (weighted by examples, or for q = 0 uniformly).
MEAN = ["FedAvg", "FedProx", "FedAvgM", "FedAdagrad", "FedAdam", "FedYogi", "QFedAvg-q0"]


def cases(names: list[str]) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("case", [CASES[n] for n in names], ids=names)


every_strategy = cases(list(CASES))


def model() -> Arrays:
    """A small model with the dtypes and shapes a real one has, including a 0-d scalar."""
    return Arrays(
        {
            "fc.weight": np.zeros((3, 2), np.float32),
            "fc.bias": np.zeros(2, np.float64),
            "bn.num_batches": np.zeros(2, np.int64),
            "scale": np.zeros((), np.float32),
        }
    )


def fit(node: int, arrays: Arrays, num_examples: int) -> FitResult:
    """A fit reply with the loss before training that q-FedAvg asks every client for."""
    return FitResult(node, arrays, num_examples, {LOSS_KEY: 0.5 + (node % 4) / 4})


def replies(count: int = 5, seed: int = 0) -> list[FitResult]:
    """Updates well away from the all-zero model (so no pseudo-gradient is near 0), with
    integer entries whose weighted sums are exact in float64, and distinct example counts."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(count):
        arrays = Arrays(
            {
                name: (
                    rng.integers(1, 50, a.shape).astype(a.dtype)
                    if a.dtype.kind == "i"
                    else (1.0 + rng.random(a.shape)).astype(a.dtype)
                )
                for name, a in model().items()
            }
        )
        out.append(fit(k + 1, arrays, 10 * k + 3))
    return out


def aggregate(
    strategy: Strategy, results: list[FitResult], current: Arrays | None = None
) -> Arrays:
    aggregator: FitAggregator = strategy.start_fit(1, model() if current is None else current)
    for result in results:
        aggregator.add(result)
    return aggregator.finish()


def assert_arrays_close(a: Arrays, b: Arrays, rtol: float = 1e-5) -> None:
    assert a.names == b.names
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        if a[name].dtype.kind == "i":
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)
        else:
            np.testing.assert_allclose(a[name], b[name], rtol=rtol, atol=1e-6, err_msg=name)


@every_strategy
@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_reply_order_does_not_change_the_result(case: Case, data: st.DataObject) -> None:
    results = replies(case.count)
    order = data.draw(st.permutations(range(case.count)))
    in_order = aggregate(case.make(), results)
    shuffled = aggregate(case.make(), [results[i] for i in order])
    # float addition is not associative, so only close, not equal
    assert_arrays_close(in_order, shuffled)


@cases(LOCATION)
def test_equal_replies_give_that_reply(case: Case) -> None:
    update = replies(count=1)[0].arrays
    results = [fit(k, update, 3 * k + 1) for k in range(case.count)]
    assert_arrays_close(aggregate(case.make(), results), update)


@cases(MEAN)
def test_equal_weights_act_like_the_arithmetic_mean_sent_as_one_reply(case: Case) -> None:
    # integer entries: offsets around 20 that cancel, so the arithmetic mean is exact
    offsets = [-6, 1, 5]
    base = replies(count=1)[0].arrays
    results = [
        fit(k, Arrays({n: (a + off).astype(a.dtype) for n, a in base.items()}), 8)
        for k, off in enumerate(offsets)
    ]
    assert sum(offsets) == 0
    from_three = aggregate(case.make(), results)
    from_mean = aggregate(case.make(), [fit(9, base, 1)])
    assert_arrays_close(from_three, from_mean)


@cases(["FedAvg", "FedProx"])
def test_fedavg_with_equal_weights_gives_the_arithmetic_mean(case: Case) -> None:
    results = [fit(r.node_id, r.arrays, 4) for r in replies()]
    got = aggregate(case.make(), results)
    for name in got:
        stacked = np.stack([r.arrays[name].astype(np.float64) for r in results])
        expected = stacked.mean(axis=0)
        if got[name].dtype.kind == "i":
            expected = np.rint(expected)
        np.testing.assert_allclose(got[name], expected, rtol=1e-6, err_msg=name)


@cases(["FedAvg", "FedProx"])
def test_fedavg_weights_each_reply_by_its_number_of_examples(case: Case) -> None:
    results = replies()
    got = aggregate(case.make(), results)
    weights = [r.num_examples for r in results]
    for name in got:
        stacked = np.stack([r.arrays[name].astype(np.float64) for r in results])
        expected = np.average(stacked, axis=0, weights=weights)
        if got[name].dtype.kind == "i":
            expected = np.rint(expected)
        np.testing.assert_allclose(got[name], expected, rtol=1e-6, err_msg=name)


@every_strategy
def test_names_dtypes_and_shapes_are_preserved(case: Case) -> None:
    got = aggregate(case.make(), replies(case.count))
    assert got.names == model().names
    for name, a in model().items():
        assert (got[name].dtype, got[name].shape) == (a.dtype, a.shape), name


@every_strategy
def test_float32_stays_float32(case: Case) -> None:
    current = Arrays({"w": np.full(4, 0.5, np.float32)})
    results = [
        fit(k, Arrays({"w": np.full(4, 1.0 + k, np.float32)}), k + 1) for k in range(case.count)
    ]
    assert aggregate(case.make(), results, current)["w"].dtype == np.float32


@every_strategy
def test_the_result_is_finite(case: Case) -> None:
    got = aggregate(case.make(), replies(case.count))
    assert all(np.isfinite(a).all() for a in got.values())


@every_strategy
def test_zero_replies_make_finish_raise_value_error(case: Case) -> None:
    with pytest.raises(ValueError):
        aggregate(case.make(), [])


@every_strategy
def test_replies_with_zero_examples_only_make_finish_raise_value_error(case: Case) -> None:
    results = [fit(r.node_id, r.arrays, 0) for r in replies(count=2)]
    with pytest.raises(ValueError):
        aggregate(case.make(), results)


@every_strategy
def test_a_failed_round_leaves_the_strategy_as_it_was(case: Case) -> None:
    # the run loop keeps the previous model when finish() raises; the next round must be
    # the same as if the failed round never happened
    strategy = case.make()
    with pytest.raises(ValueError):
        aggregate(strategy, [])
    got = aggregate(strategy, replies(case.count))
    assert_arrays_close(got, aggregate(case.make(), replies(case.count)), rtol=0)


@every_strategy
def test_aggregation_mutates_neither_the_current_model_nor_the_replies(case: Case) -> None:
    current, results = model(), replies(case.count)
    for a in [*current.values(), *(a for r in results for a in r.arrays.values())]:
        a.setflags(write=False)  # numpy raises if anything writes into them
    aggregate(case.make(), results, current)
    assert current == model()
    assert all(r.arrays == e.arrays for r, e in zip(results, replies(case.count), strict=True))


@every_strategy
def test_each_round_gets_its_own_aggregator_from_the_current_model(case: Case) -> None:
    strategy = case.make()
    current = model()
    for rnd in range(1, 4):
        aggregator = strategy.start_fit(rnd, current)
        for result in replies(case.count, seed=rnd):
            aggregator.add(result)
        current = aggregator.finish()
        assert current.names == model().names
        assert all(np.isfinite(a).all() for a in current.values())
