"""Specification of q-FedAvg's streamed step (Li et al. 2020, Algorithm 2), on hand-computed
cases and as properties."""

from __future__ import annotations

import gc
import math
import tracemalloc
import weakref

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pollinate.aggregate import QFedAvgStep, WeightedMean
from pollinate.records import Arrays
from pollinate.scratch import BLOCK


def step(current: Arrays, updates: list[tuple[Arrays, float]], q: float, lip: float) -> Arrays:
    acc = QFedAvgStep(current, q=q, lipschitz=lip)
    for arrays, loss in updates:
        acc.add(arrays, loss)
    return acc.result()


def w(*values: float) -> Arrays:
    return Arrays({"w": np.array(values)})


# --- hand-computed cases ---------------------------------------------------------------------


def test_two_clients_with_q_one() -> None:
    # w = 0. Client 1: w - w_1 = 1, F = 2: Delta = 2 * 1 * 1 = 2, h = 1 * 2^0 * 1 + 1 * 2 = 3.
    # Client 2: w - w_2 = 2, F = 1: Delta = 1 * 1 * 2 = 2, h = 1 * 1 * 4 + 1 * 1 = 5.
    # w' = 0 - (2 + 2) / (3 + 5)
    assert step(w(0.0), [(w(-1.0), 2.0), (w(-2.0), 1.0)], q=1.0, lip=1.0)["w"].tolist() == [-0.5]


def test_one_client_with_q_two_and_l_two() -> None:
    # w - w_1 = 0.5, L (w - w_1) = 1, F = 3: Delta = 9 * 2 * 0.5 = 9, h = 2 * 3 * 1 + 2 * 9 = 24
    # w' = 1 - 9 / 24 = 0.625
    assert step(w(1.0), [(w(0.5), 3.0)], q=2.0, lip=2.0)["w"].tolist() == [0.625]


def test_the_norm_spans_every_array_of_the_model() -> None:
    # w - w_1 = ([1, 0], [1]): ||.||^2 = 2. q = 1, L = 0.5, F = 4:
    # Delta = 4 * 0.5 (w - w_1) = 2 (w - w_1); h = 1 * 1 * 0.25 * 2 + 0.5 * 4 = 2.5
    # w' = w - 0.8 (w - w_1) = ([0.2, 1], [-0.8])
    current = Arrays({"a": np.array([1.0, 1.0]), "b": np.array([0.0])})
    update = Arrays({"a": np.array([0.0, 1.0]), "b": np.array([-1.0])})
    got = step(current, [(update, 4.0)], q=1.0, lip=0.5)
    np.testing.assert_allclose(got["a"], [0.2, 1.0], rtol=1e-15)
    np.testing.assert_allclose(got["b"], [-0.8], rtol=1e-15)


def test_a_client_with_a_higher_loss_pulls_harder() -> None:
    # w = 0; w_1 = -1 with F = 1, w_2 = 1 with F = 3. q = 0: the mean, 0. q = 2, L = 1:
    # Delta_1 = 1 * 1, h_1 = 2 * 1 * 1 + 1; Delta_2 = 9 * -1, h_2 = 2 * 3 * 1 + 9
    # w' = 0 - (1 - 9) / (3 + 15) = 4 / 9, towards the client with the higher loss
    updates = [(w(-1.0), 1.0), (w(1.0), 3.0)]
    assert step(w(0.0), updates, q=0.0, lip=1.0)["w"].tolist() == [0.0]
    np.testing.assert_allclose(step(w(0.0), updates, q=2.0, lip=1.0)["w"], [4 / 9], rtol=1e-15)


# --- q = 0 is FedAvg -------------------------------------------------------------------------

_models = hnp.arrays(
    np.float64, (2, 3), elements=st.floats(-1e3, 1e3, allow_nan=False, allow_subnormal=False)
)


@settings(max_examples=50, deadline=None)
@given(
    current=_models,
    updates=st.lists(st.tuples(_models, st.floats(0, 100)), min_size=1, max_size=6),
    lr=st.sampled_from([1e-3, 0.01, 0.1, 1.0]),
)
def test_q_zero_is_a_fedavg_step_with_equal_weights_whatever_l(
    current: np.ndarray, updates: list[tuple[np.ndarray, float]], lr: float
) -> None:
    # With q = 0: Delta_k = L (w - w_k) and h_k = L F_k^0 = L, so
    #   w' = w - sum_k L (w - w_k) / (n L) = (1 / n) sum_k w_k,
    # FedAvg's new model with equal weights (the paper samples clients with probability
    # proportional to their examples, which makes this FedAvg's expected step). L = 1 / lr
    # cancels; it matters only for q > 0, where it sets the two terms of h_k apart.
    got = step(Arrays({"m": current}), [(Arrays({"m": u}), f) for u, f in updates], 0.0, 1 / lr)
    mean = WeightedMean(Arrays({"m": current}))
    for u, _ in updates:
        mean.add(Arrays({"m": u}), 1)
    np.testing.assert_allclose(got["m"], mean.result()["m"], rtol=1e-9, atol=1e-9)


# --- dtypes, shapes, order -------------------------------------------------------------------


def test_names_shapes_and_dtypes_are_those_of_the_current_model() -> None:
    current = Arrays(
        {
            "conv": np.zeros((2, 3, 4), np.float32),
            "half": np.zeros(3, np.float16),
            "steps": np.zeros((), np.int64),
            "empty": np.zeros((0, 2), np.float32),
        }
    )
    update = Arrays({n: np.ones_like(a) for n, a in current.items()})
    got = step(current, [(update, 1.0)], q=0.5, lip=10.0)
    assert got.names == current.names
    for name, a in current.items():
        assert (got[name].dtype, got[name].shape) == (a.dtype, a.shape), name


def test_integer_arrays_are_rounded() -> None:
    # q = 0: the mean of 3 and 4 is 3.5 -> 4 (half to even)
    current = Arrays({"n": np.array([0], np.int32)})
    updates = [(Arrays({"n": np.array([v], np.int32)}), 1.0) for v in (3, 4)]
    got = step(current, updates, q=0.0, lip=1.0)
    assert got["n"].dtype == np.int32 and got["n"].tolist() == [4]


@settings(max_examples=30, deadline=None)
@given(
    updates=st.lists(st.tuples(_models, st.floats(0.01, 10)), min_size=2, max_size=6),
    q=st.sampled_from([0.0, 0.1, 1.0, 3.0]),
    data=st.data(),
)
def test_the_order_of_the_updates_does_not_change_the_result(
    updates: list[tuple[np.ndarray, float]], q: float, data: st.DataObject
) -> None:
    order = data.draw(st.permutations(range(len(updates))))
    current = Arrays({"m": np.ones((2, 3))})
    as_given = [(Arrays({"m": u}), f) for u, f in updates]
    got = step(current, as_given, q, 10.0)
    shuffled = step(current, [as_given[i] for i in order], q, 10.0)
    np.testing.assert_allclose(shuffled["m"], got["m"], rtol=1e-9, atol=1e-9)


def test_a_model_larger_than_a_block_is_folded_whole() -> None:
    size = 2 * BLOCK + 3
    current = Arrays({"w": np.zeros(size, np.float32)})
    update = np.zeros(size, np.float32)
    update[-1], update[BLOCK] = -2.0, -1.0
    # one client, q = 0: w' = w_1
    got = step(current, [(Arrays({"w": update}), 1.0)], q=0.0, lip=3.0)
    np.testing.assert_array_equal(got["w"], update)


# --- errors and edge cases -------------------------------------------------------------------


def test_no_update_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="no update"):
        QFedAvgStep(w(0.0), q=1.0, lipschitz=1.0).result()


@pytest.mark.parametrize("loss", [-1.0, math.nan, True, "1.0"])
def test_a_loss_that_is_not_a_number_at_least_zero_is_refused(loss: object) -> None:
    acc = QFedAvgStep(w(0.0), q=1.0, lipschitz=1.0)
    with pytest.raises((TypeError, ValueError), match="loss must be a number >= 0"):
        acc.add(w(1.0), loss)  # type: ignore[arg-type]
    assert acc.count == 0


def test_an_update_of_the_wrong_shape_changes_nothing() -> None:
    acc = QFedAvgStep(Arrays({"a": np.zeros(2), "b": np.zeros(2)}), q=1.0, lipschitz=1.0)
    with pytest.raises(ValueError, match="'b' has shape \\(3,\\), expected \\(2,\\)"):
        acc.add(Arrays({"a": np.ones(2), "b": np.ones(3)}), 1.0)
    with pytest.raises(ValueError, match="'b' has shape nothing"):
        acc.add(Arrays({"a": np.ones(2)}), 1.0)
    acc.add(Arrays({"a": np.full(2, -1.0), "b": np.full(2, -1.0)}), 1.0)
    assert acc.count == 1
    # one client: F = 1, ||w - w_1||^2 = 4: Delta = (1, 1, 1, 1), h = 4 + 1; w' = 0 - 1 / 5
    np.testing.assert_allclose(acc.result()["a"], [-0.2, -0.2])


@pytest.mark.parametrize(
    ("q", "lip"), [(-0.1, 1.0), (math.inf, 1.0), (math.nan, 1.0), (1.0, 0.0), (1.0, math.inf)]
)
def test_impossible_q_or_l_is_refused(q: float, lip: float) -> None:
    with pytest.raises(ValueError, match="Hint: "):
        QFedAvgStep(w(0.0), q=q, lipschitz=lip)


@pytest.mark.parametrize("q", [0.01, 0.5, 1.0, 2.0])
def test_a_client_at_zero_loss_leaves_the_step_finite(q: float) -> None:
    # F^(q-1) is infinite at 0 for q < 1; the floor keeps the others' say
    got = step(w(0.0), [(w(-1.0), 0.0), (w(-2.0), 1.0)], q=q, lip=1.0)
    assert np.isfinite(got["w"]).all() and got["w"][0] < 0


def test_a_loss_to_the_power_q_that_overflows_is_refused() -> None:
    acc = QFedAvgStep(w(0.0), q=200.0, lipschitz=1.0)
    with pytest.raises(ValueError, match="overflows float64\\nHint: "):
        acc.add(w(1.0), 1e10)
    assert acc.count == 0


# --- memory invariant ------------------------------------------------------------------------


def test_the_accumulator_keeps_no_reference_to_added_updates() -> None:
    acc = QFedAvgStep(Arrays({"w": np.zeros(1000)}), q=1.0, lipschitz=1.0)
    refs = []
    for k in range(5):
        update = np.full(1000, float(k))
        refs.append(weakref.ref(update))
        acc.add(Arrays({"w": update}), 1.0)
        del update
    gc.collect()
    assert all(ref() is None for ref in refs)


def test_memory_stays_one_model_whatever_the_number_of_updates() -> None:
    size = 100_000  # 800 kB per float64 update
    acc = QFedAvgStep(Arrays({"w": np.zeros(size)}), q=1.0, lipschitz=1.0)
    acc.add(Arrays({"w": np.ones(size)}), 1.0)
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for k in range(30):
            acc.add(Arrays({"w": np.full(size, float(k))}), 1.0 + k)
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert after - before < size * 8
    assert acc.count == 31
