"""Checks every strategy passes, used the way the run loop uses it:
``start_fit(round, current)``, then ``add(FitResult)`` per reply as it arrives, then
``finish()`` for the next global arrays."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pollinate.records import Arrays
from pollinate.strategy import (
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedProx,
    FedYogi,
    FitAggregator,
    FitResult,
    Strategy,
)

STRATEGIES: dict[str, Callable[[], Strategy]] = {
    "FedAvg": FedAvg,
    "FedProx": lambda: FedProx(proximal_mu=0.1),
    "FedAvgM": FedAvgM,
    "FedAdagrad": FedAdagrad,
    "FedAdam": FedAdam,
    "FedYogi": FedYogi,
}

every_strategy = pytest.mark.parametrize("make", STRATEGIES.values(), ids=STRATEGIES.keys())


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
        out.append(FitResult(node_id=k + 1, arrays=arrays, num_examples=10 * k + 3, metrics={}))
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
@given(order=st.permutations(range(5)))
def test_reply_order_does_not_change_the_result(
    make: Callable[[], Strategy], order: list[int]
) -> None:
    results = replies()
    in_order = aggregate(make(), results)
    shuffled = aggregate(make(), [results[i] for i in order])
    # float addition is not associative, so only close, not equal
    assert_arrays_close(in_order, shuffled)


@every_strategy
def test_equal_weights_act_like_the_arithmetic_mean_sent_as_one_reply(
    make: Callable[[], Strategy],
) -> None:
    # integer entries: offsets around 20 that cancel, so the arithmetic mean is exact
    offsets = [-6, 1, 5]
    base = replies(count=1)[0].arrays
    results = [
        FitResult(k, Arrays({n: (a + off).astype(a.dtype) for n, a in base.items()}), 8, {})
        for k, off in enumerate(offsets)
    ]
    assert sum(offsets) == 0
    from_three = aggregate(make(), results)
    from_mean = aggregate(make(), [FitResult(9, base, 1, {})])
    assert_arrays_close(from_three, from_mean)


@pytest.mark.parametrize(
    "make", [FedAvg, lambda: FedProx(proximal_mu=0.1)], ids=["FedAvg", "FedProx"]
)
def test_fedavg_with_equal_weights_gives_the_arithmetic_mean(
    make: Callable[[], Strategy],
) -> None:
    results = [FitResult(r.node_id, r.arrays, 4, {}) for r in replies()]
    got = aggregate(make(), results)
    for name in got:
        stacked = np.stack([r.arrays[name].astype(np.float64) for r in results])
        expected = stacked.mean(axis=0)
        if got[name].dtype.kind == "i":
            expected = np.rint(expected)
        np.testing.assert_allclose(got[name], expected, rtol=1e-6, err_msg=name)


@pytest.mark.parametrize(
    "make", [FedAvg, lambda: FedProx(proximal_mu=0.1)], ids=["FedAvg", "FedProx"]
)
def test_fedavg_weights_each_reply_by_its_number_of_examples(
    make: Callable[[], Strategy],
) -> None:
    results = replies()
    got = aggregate(make(), results)
    weights = [r.num_examples for r in results]
    for name in got:
        stacked = np.stack([r.arrays[name].astype(np.float64) for r in results])
        expected = np.average(stacked, axis=0, weights=weights)
        if got[name].dtype.kind == "i":
            expected = np.rint(expected)
        np.testing.assert_allclose(got[name], expected, rtol=1e-6, err_msg=name)


@every_strategy
def test_names_dtypes_and_shapes_are_preserved(make: Callable[[], Strategy]) -> None:
    got = aggregate(make(), replies())
    assert got.names == model().names
    for name, a in model().items():
        assert (got[name].dtype, got[name].shape) == (a.dtype, a.shape), name


@every_strategy
def test_float32_stays_float32(make: Callable[[], Strategy]) -> None:
    current = Arrays({"w": np.full(4, 0.5, np.float32)})
    results = [
        FitResult(k, Arrays({"w": np.full(4, 1.0 + k, np.float32)}), k + 1, {}) for k in range(3)
    ]
    assert aggregate(make(), results, current)["w"].dtype == np.float32


@every_strategy
def test_the_result_is_finite(make: Callable[[], Strategy]) -> None:
    got = aggregate(make(), replies())
    assert all(np.isfinite(a).all() for a in got.values())


@every_strategy
def test_zero_replies_make_finish_raise_value_error(make: Callable[[], Strategy]) -> None:
    with pytest.raises(ValueError):
        aggregate(make(), [])


@every_strategy
def test_replies_with_zero_examples_only_make_finish_raise_value_error(
    make: Callable[[], Strategy],
) -> None:
    results = [FitResult(r.node_id, r.arrays, 0, {}) for r in replies(count=2)]
    with pytest.raises(ValueError):
        aggregate(make(), results)


@every_strategy
def test_a_failed_round_leaves_the_strategy_as_it_was(make: Callable[[], Strategy]) -> None:
    # the run loop keeps the previous model when finish() raises; the next round must be
    # the same as if the failed round never happened
    strategy = make()
    with pytest.raises(ValueError):
        aggregate(strategy, [])
    assert_arrays_close(aggregate(strategy, replies()), aggregate(make(), replies()), rtol=0)


@every_strategy
def test_aggregation_mutates_neither_the_current_model_nor_the_replies(
    make: Callable[[], Strategy],
) -> None:
    current, results = model(), replies()
    for a in [*current.values(), *(a for r in results for a in r.arrays.values())]:
        a.setflags(write=False)  # numpy raises if anything writes into them
    aggregate(make(), results, current)
    assert current == model()
    assert all(r.arrays == e.arrays for r, e in zip(results, replies(), strict=True))


@every_strategy
def test_each_round_gets_its_own_aggregator_from_the_current_model(
    make: Callable[[], Strategy],
) -> None:
    strategy = make()
    current = model()
    for rnd in range(1, 4):
        aggregator = strategy.start_fit(rnd, current)
        for result in replies(seed=rnd):
            aggregator.add(result)
        current = aggregator.finish()
        assert current.names == model().names
        assert all(np.isfinite(a).all() for a in current.values())
