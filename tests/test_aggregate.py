"""Specification of the aggregation math: the streaming weighted mean, metric averaging and
the server optimizers of FedAvgM and FedOpt, on hand-computed cases."""

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

from pollinate.aggregate import (
    WeightedMean,
    adagrad_moment,
    adam_moment,
    adaptive_step,
    first_moment,
    momentum_step,
    weighted_average,
    yogi_moment,
)
from pollinate.records import Arrays
from pollinate.scratch import BLOCK


def mean_of(updates: list[tuple[Arrays, float]]) -> Arrays:
    acc = WeightedMean(updates[0][0])
    for arrays, weight in updates:
        acc.add(arrays, weight)
    return acc.result()


# --- WeightedMean: hand-computed cases -------------------------------------------------------


def test_weighted_mean_of_two_updates_matches_the_hand_computed_value() -> None:
    # (1 * [1, 2] + 2 * [4, 5]) / 3 = [9, 12] / 3
    result = mean_of(
        [
            (Arrays({"w": np.array([1.0, 2.0])}), 1),
            (Arrays({"w": np.array([4.0, 5.0])}), 2),
        ]
    )
    assert result["w"].tolist() == [3.0, 4.0]


def test_weighted_mean_of_three_updates_with_example_counts_as_weights() -> None:
    # (10 * 0 + 30 * 4 + 60 * 1) / 100 = 1.8 ; (10 * 10 + 30 * 0 + 60 * -5) / 100 = -2.0
    result = mean_of(
        [
            (Arrays({"w": np.array([0.0, 10.0])}), 10),
            (Arrays({"w": np.array([4.0, 0.0])}), 30),
            (Arrays({"w": np.array([1.0, -5.0])}), 60),
        ]
    )
    np.testing.assert_allclose(result["w"], [1.8, -2.0], rtol=0, atol=1e-12)


def test_a_single_update_is_its_own_mean_whatever_its_weight() -> None:
    update = Arrays({"w": np.array([[1.5, -2.0], [0.25, 8.0]])})
    assert mean_of([(update, 7)]) == update


def test_an_update_with_zero_weight_does_not_move_the_mean() -> None:
    result = mean_of(
        [
            (Arrays({"w": np.array([2.0])}), 3),
            (Arrays({"w": np.array([1000.0])}), 0),
        ]
    )
    assert result["w"].tolist() == [2.0]


def test_integer_arrays_are_rounded_back_to_their_dtype() -> None:
    # (2 * [0, 10] + 1 * [10, 0]) / 3 = [3.33.., 6.66..] -> rounded [3, 7], not truncated [3, 6]
    result = mean_of(
        [
            (Arrays({"n": np.array([0, 10], dtype=np.int32)}), 2),
            (Arrays({"n": np.array([10, 0], dtype=np.int32)}), 1),
        ]
    )
    assert result["n"].dtype == np.int32
    assert result["n"].tolist() == [3, 7]


def test_unsigned_integer_arrays_keep_their_dtype() -> None:
    result = mean_of(
        [
            (Arrays({"u": np.array([0, 255], dtype=np.uint8)}), 1),
            (Arrays({"u": np.array([254, 255], dtype=np.uint8)}), 1),
        ]
    )
    assert result["u"].dtype == np.uint8
    assert result["u"].tolist() == [127, 255]


def test_float32_stays_float32() -> None:
    result = mean_of(
        [
            (Arrays({"w": np.array([1.0, 2.0], dtype=np.float32)}), 1),
            (Arrays({"w": np.array([3.0, 4.0], dtype=np.float32)}), 3),
        ]
    )
    assert result["w"].dtype == np.float32
    assert result["w"].tolist() == [2.5, 3.5]


def test_complex_arrays_are_averaged_not_rounded() -> None:
    result = mean_of(
        [
            (Arrays({"c": np.array([0.3 + 0.4j, 1.2 - 0.7j])}), 1),
            (Arrays({"c": np.array([0.1 + 0.0j, 0.0 + 0.1j])}), 1),
        ]
    )
    assert result["c"].dtype == np.complex128
    np.testing.assert_allclose(result["c"], [0.2 + 0.2j, 0.6 - 0.3j], atol=1e-12)


def test_names_order_shapes_and_dtypes_are_those_of_the_model() -> None:
    like = Arrays(
        {
            "conv.weight": np.zeros((2, 3, 4), np.float32),
            "conv.bias": np.zeros(2, np.float64),
            "step": np.zeros((), np.int64),
            "empty": np.zeros((0, 5), np.float32),
        }
    )
    update = Arrays({name: np.ones_like(a) for name, a in like.items()})
    acc = WeightedMean(like)
    acc.add(update, 2)
    result = acc.result()
    assert result.names == like.names
    for name, a in like.items():
        assert result[name].shape == a.shape, name
        assert result[name].dtype == a.dtype, name
    assert result == update


def test_count_and_total_weight_track_what_was_added() -> None:
    acc = WeightedMean(Arrays({"w": np.zeros(1)}))
    acc.add(Arrays({"w": np.ones(1)}), 3)
    acc.add(Arrays({"w": np.ones(1)}), 4.5)
    assert (acc.count, acc.total_weight) == (2, 7.5)


# --- WeightedMean: errors --------------------------------------------------------------------


def test_the_mean_of_nothing_is_undefined() -> None:
    with pytest.raises(ValueError, match="positive weight"):
        WeightedMean(Arrays({"w": np.zeros(2)})).result()


def test_zero_total_weight_raises_value_error() -> None:
    acc = WeightedMean(Arrays({"w": np.zeros(2)}))
    acc.add(Arrays({"w": np.ones(2)}), 0)
    acc.add(Arrays({"w": np.ones(2)}), 0.0)
    with pytest.raises(ValueError, match="positive weight"):
        acc.result()


@pytest.mark.parametrize("weight", [-1, -1e-9, math.nan, math.inf, -math.inf])
def test_a_negative_or_non_finite_weight_is_rejected(weight: float) -> None:
    acc = WeightedMean(Arrays({"w": np.zeros(2)}))
    with pytest.raises(ValueError, match="weight must be finite and >= 0"):
        acc.add(Arrays({"w": np.ones(2)}), weight)
    assert acc.count == 0 and acc.total_weight == 0


def test_an_update_of_the_wrong_shape_is_rejected_before_anything_is_folded() -> None:
    acc = WeightedMean(Arrays({"a": np.zeros(3), "b": np.zeros((2, 2))}))
    with pytest.raises(ValueError, match="'b'"):
        acc.add(Arrays({"a": np.ones(3), "b": np.ones(2)}), 1)
    acc.add(Arrays({"a": np.full(3, 2.0), "b": np.full((2, 2), 2.0)}), 1)
    assert acc.count == 1
    assert acc.result()["a"].tolist() == [2.0, 2.0, 2.0]


# --- WeightedMean: arrays larger than one block ----------------------------------------------


def reference_mean(updates: list[np.ndarray], weights: list[int]) -> np.ndarray:
    total = sum(w * u.astype(np.float64) for u, w in zip(updates, weights, strict=True))
    return total / sum(weights)


def assert_matches_reference(got: np.ndarray, reference: np.ndarray) -> None:
    if got.dtype.kind == "f":
        tol = 1e-5 if got.dtype == np.float32 else 1e-12
        np.testing.assert_allclose(got, reference, rtol=tol, atol=tol)
    else:
        np.testing.assert_array_equal(got, np.rint(reference).astype(got.dtype))


def random_updates(rng: np.random.Generator, size: int, dtype: type, count: int) -> list:
    if np.dtype(dtype).kind == "f":
        return [rng.standard_normal(size).astype(dtype) for _ in range(count)]
    return [rng.integers(-1000, 1000, size).astype(dtype) for _ in range(count)]


@pytest.mark.parametrize(
    ("size", "dtype"),
    [
        (BLOCK - 1, np.float64),
        (BLOCK + 1, np.float32),
        (2 * BLOCK + 12_345, np.float32),
        (2 * BLOCK + 12_345, np.int32),
        (3 * BLOCK, np.float64),
    ],
    ids=["block-1-f64", "block+1-f32", "2blocks+rest-f32", "2blocks+rest-i32", "3blocks-f64"],
)
def test_arrays_spanning_several_blocks_fold_like_a_float64_reference(
    size: int, dtype: type
) -> None:
    rng = np.random.default_rng(size)
    weights = [3, 1, 12]
    updates = random_updates(rng, size, dtype, len(weights))
    # a 2-D shape whose rows straddle block boundaries
    shape = (size // 5, 5) if size % 5 == 0 else (size,)
    result = mean_of(
        [(Arrays({"w": u.reshape(shape)}), w) for u, w in zip(updates, weights, strict=True)]
    )
    got = result["w"]
    assert got.dtype == np.dtype(dtype) and got.shape == shape
    assert_matches_reference(got.reshape(-1), reference_mean(updates, weights))


def test_a_model_of_several_arrays_larger_than_a_block_folds_like_the_reference() -> None:
    # sizes straddle block boundaries and the model as a whole is several blocks large
    rng = np.random.default_rng(1)
    layout = {
        "a": (BLOCK // 2 + 3, np.float32),
        "b": (7, np.float64),
        "c": (BLOCK + 5, np.float32),
        "d": (BLOCK // 3, np.int64),
        "e": (1, np.float32),
    }
    weights = [5, 2, 9]
    per_name = {n: random_updates(rng, size, dt, len(weights)) for n, (size, dt) in layout.items()}
    updates = [Arrays({n: per_name[n][k] for n in layout}) for k in range(len(weights))]
    result = mean_of(list(zip(updates, weights, strict=True)))
    assert result.names == list(layout)
    for name, (_, dtype) in layout.items():
        assert result[name].dtype == np.dtype(dtype), name
        assert_matches_reference(result[name], reference_mean(per_name[name], weights))


def test_the_last_element_of_a_multi_block_array_is_folded() -> None:
    size = 2 * BLOCK + 1
    update = np.zeros(size)
    update[-1] = 6.0
    update[BLOCK] = 3.0
    result = mean_of([(Arrays({"w": update}), 2), (Arrays({"w": np.zeros(size)}), 1)])
    assert result["w"][-1] == 4.0
    assert result["w"][BLOCK] == 2.0
    assert np.count_nonzero(result["w"]) == 2


# --- WeightedMean: memory invariant ----------------------------------------------------------


def test_the_accumulator_keeps_no_reference_to_added_updates() -> None:
    acc = WeightedMean(Arrays({"w": np.zeros(1000), "b": np.zeros(3, np.float32)}))
    refs = []
    for k in range(5):
        w, b = np.full(1000, float(k)), np.full(3, float(k), np.float32)
        refs += [weakref.ref(w), weakref.ref(b)]
        acc.add(Arrays({"w": w, "b": b}), 1)
        del w, b
    gc.collect()
    assert all(ref() is None for ref in refs)
    assert acc.result()["w"][0] == 2.0


def test_updates_larger_than_a_block_are_not_kept_either() -> None:
    size = BLOCK + 1
    acc = WeightedMean(Arrays({"w": np.zeros(size, np.float32)}))
    refs = []
    for k in range(3):
        w = np.full(size, float(k), np.float32)
        refs.append(weakref.ref(w))
        acc.add(Arrays({"w": w}), 1)
        del w
    gc.collect()
    assert all(ref() is None for ref in refs)
    assert acc.result()["w"][-1] == 1.0


def test_memory_stays_one_model_whatever_the_number_of_updates() -> None:
    size = 100_000  # 800 kB per float64 update
    acc = WeightedMean(Arrays({"w": np.zeros(size)}))
    acc.add(Arrays({"w": np.ones(size)}), 1)  # warm up: any lazily allocated buffers exist now
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for k in range(30):
            acc.add(Arrays({"w": np.full(size, float(k))}), 1)
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # storing the 30 updates would take 24 MB; one spare model's worth is the honest bound
    assert after - before < size * 8
    assert acc.count == 31


def test_the_accumulator_reads_read_only_updates_without_copying_them_into_state() -> None:
    update = np.arange(4.0)
    update.setflags(write=False)  # wire-decoded arrays are read-only views of a buffer
    acc = WeightedMean(Arrays({"w": np.zeros(4)}))
    acc.add(Arrays({"w": update}), 2)
    assert acc.result()["w"].tolist() == [0.0, 1.0, 2.0, 3.0]


# --- WeightedMean: properties ----------------------------------------------------------------

_values = hnp.arrays(
    np.float64, (3, 2), elements=st.floats(-1e6, 1e6, allow_nan=False, allow_subnormal=False)
)


@settings(max_examples=50, deadline=None)
@given(
    updates=st.lists(st.tuples(_values, st.integers(1, 10_000)), min_size=1, max_size=6),
    data=st.data(),
)
def test_the_mean_matches_numpy_average_in_any_order(
    updates: list[tuple[np.ndarray, int]], data: st.DataObject
) -> None:
    order = data.draw(st.permutations(range(len(updates))))
    result = mean_of([(Arrays({"w": updates[i][0]}), updates[i][1]) for i in order])
    expected = np.average(
        np.stack([u for u, _ in updates]), axis=0, weights=[w for _, w in updates]
    )
    np.testing.assert_allclose(result["w"], expected, rtol=1e-9, atol=1e-6)


@settings(max_examples=50, deadline=None)
@given(updates=st.lists(st.tuples(_values, st.integers(1, 100)), min_size=1, max_size=6))
def test_the_mean_lies_between_the_smallest_and_largest_update(
    updates: list[tuple[np.ndarray, int]],
) -> None:
    result = mean_of([(Arrays({"w": u}), w) for u, w in updates])["w"]
    stacked = np.stack([u for u, _ in updates])
    slack = 1e-9 * (1 + np.abs(stacked).max())
    assert np.all(result >= stacked.min(axis=0) - slack)
    assert np.all(result <= stacked.max(axis=0) + slack)


# --- weighted_average of metrics -------------------------------------------------------------


def test_weighted_average_weights_each_metric_by_examples() -> None:
    # acc: (10 * 0.5 + 30 * 0.9) / 40 = 0.8 ; loss: (10 * 2 + 30 * 1) / 40 = 1.25
    result = weighted_average([(10, {"acc": 0.5, "loss": 2}), (30, {"acc": 0.9, "loss": 1.0})])
    assert result == pytest.approx({"acc": 0.8, "loss": 1.25})


def test_weighted_average_skips_non_numeric_metrics() -> None:
    result = weighted_average([(1, {"acc": 1.0, "tag": "a", "blob": b"x"}), (3, {"acc": 0.0})])
    assert result == {"acc": 0.25}


def test_weighted_average_skips_bools_even_though_they_are_ints() -> None:
    result = weighted_average([(1, {"converged": True, "acc": 1.0}), (1, {"converged": False})])
    assert result == {"acc": 1.0}


def test_a_metric_missing_from_some_clients_is_averaged_over_those_that_sent_it() -> None:
    # f1 is reported only by the second and third clients: (20 * 0.5 + 20 * 1.0) / 40
    result = weighted_average(
        [(60, {"acc": 0.1}), (20, {"acc": 0.6, "f1": 0.5}), (20, {"acc": 0.6, "f1": 1.0})]
    )
    assert result == pytest.approx({"acc": 0.3, "f1": 0.75})


def test_a_metric_whose_clients_all_had_zero_examples_is_left_out() -> None:
    assert weighted_average([(0, {"acc": 0.5}), (5, {"loss": 2.0})]) == {"loss": 2.0}


def test_weighted_average_of_no_results_is_empty() -> None:
    assert weighted_average([]) == {}


def test_weighted_average_accepts_a_generator() -> None:
    pairs = ((n, {"x": float(n)}) for n in (1, 3))
    assert weighted_average(pairs) == {"x": 2.5}  # (1 * 1 + 3 * 3) / 4


# --- server optimizers: hand-computed single steps -------------------------------------------


def test_momentum_step_hand_case() -> None:
    # v = 0.5 * [2, 0] + ([10, 1] - [8, 2]) = [3, -1] ; x' = [10, 1] - 0.1 * [3, -1]
    x, v = momentum_step(
        np.array([10.0, 1.0]), np.array([8.0, 2.0]), np.array([2.0, 0.0]), lr=0.1, momentum=0.5
    )
    np.testing.assert_allclose(v, [3.0, -1.0])
    np.testing.assert_allclose(x, [9.7, 1.1])


def test_momentum_step_with_lr_one_and_no_momentum_is_fedavg() -> None:
    mean = np.array([0.25, -3.0, 7.5])
    x, _ = momentum_step(np.array([1.0, 2.0, 3.0]), mean, np.array([9.0, 9.0, 9.0]), 1.0, 0.0)
    np.testing.assert_allclose(x, mean)


def test_first_moment_hand_case() -> None:
    # 0.9 * [1, -1] + 0.1 * [3, 5] = [1.2, -0.4]
    m = first_moment(np.array([1.0, -1.0]), np.array([3.0, 5.0]), 0.9)
    np.testing.assert_allclose(m, [1.2, -0.4])


def test_adagrad_moment_adds_the_squared_change() -> None:
    v = adagrad_moment(np.array([0.5, 1.0]), np.array([2.0, -3.0]))
    np.testing.assert_allclose(v, [4.5, 10.0])


def test_adam_moment_hand_case() -> None:
    # 0.75 * [4, 0] + 0.25 * [2, -2]^2 = [4, 1]
    v = adam_moment(np.array([4.0, 0.0]), np.array([2.0, -2.0]), 0.75)
    np.testing.assert_allclose(v, [4.0, 1.0])


def test_yogi_moment_moves_v_towards_the_squared_change_by_a_fixed_step() -> None:
    # delta^2 = [4, 4]; v = [1, 9]: v < delta^2 grows, v > delta^2 shrinks, by (1 - 0.5) * 4
    v = yogi_moment(np.array([1.0, 9.0]), np.array([2.0, -2.0]), 0.5)
    np.testing.assert_allclose(v, [3.0, 7.0])


def test_yogi_moment_leaves_v_alone_when_it_equals_the_squared_change() -> None:
    np.testing.assert_allclose(yogi_moment(np.array([4.0]), np.array([2.0]), 0.9), [4.0])


def test_adaptive_step_hand_case() -> None:
    # 1 + 0.5 * 0.4 / (sqrt(0.25) + 0.3) = 1 + 0.2 / 0.8 = 1.25
    x = adaptive_step(np.array([1.0]), np.array([0.4]), np.array([0.25]), eta=0.5, tau=0.3)
    np.testing.assert_allclose(x, [1.25])


def test_a_mean_folds_into_the_last_ones_accumulator_once_it_is_gone() -> None:
    like = Arrays({"w": np.zeros(BLOCK + 3, np.float32)})
    first = WeightedMean(like)
    first.add(Arrays({"w": np.full(BLOCK + 3, 5.0, np.float32)}), 1.0)
    held = first.partial()  # views of its accumulator
    where = held.sums["w"].ctypes.data
    del first
    second = WeightedMean(like)  # the first's accumulator is still held: not reused
    second.add(Arrays({"w": np.ones(BLOCK + 3, np.float32)}), 2.0)
    assert second.partial().sums["w"].ctypes.data != where
    np.testing.assert_array_equal(held.sums["w"], 5.0)
    address = second.partial().sums["w"].ctypes.data
    del second, held
    third = WeightedMean(like)
    third.add(Arrays({"w": np.full(BLOCK + 3, 3.0, np.float32)}), 1.0)
    third.add(Arrays({"w": np.ones(BLOCK + 3, np.float32)}), 1.0)
    assert third.partial().sums["w"].ctypes.data == address
    np.testing.assert_array_equal(third.result()["w"], 2.0)
