"""Clipping bounds one client's influence: hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from pollinate.dp import NORM_BELOW_KEY, clip_update, update_norm
from pollinate.records import Arrays


def arrays(**named: list[float]) -> Arrays:
    return Arrays({k: np.array(v, np.float64) for k, v in named.items()})


def test_the_norm_is_taken_over_all_arrays_as_one_vector() -> None:
    before = arrays(a=[0.0, 0.0], b=[1.0])
    after = arrays(a=[3.0, 0.0], b=[5.0])  # update (3, 0) and (4): norm 5
    assert update_norm(before, after) == pytest.approx(5.0)


def test_an_update_above_the_bound_is_scaled_onto_it() -> None:
    before = arrays(a=[0.0, 0.0], b=[1.0])
    after = arrays(a=[3.0, 0.0], b=[5.0])
    clipped, metrics = clip_update(before, after, 2.5)
    np.testing.assert_allclose(clipped["a"], [1.5, 0.0])
    np.testing.assert_allclose(clipped["b"], [3.0])  # 1 + 4 / 2
    assert update_norm(before, clipped) == pytest.approx(2.5)
    assert metrics == {NORM_BELOW_KEY: 0}


def test_an_update_exactly_at_the_bound_is_left_as_it_is() -> None:
    before, after = arrays(w=[1.0, 1.0]), arrays(w=[4.0, 5.0])  # update (3, 4)
    clipped, metrics = clip_update(before, after, 5.0)
    np.testing.assert_array_equal(clipped["w"], after["w"])
    assert metrics == {NORM_BELOW_KEY: 1}


def test_a_zero_update_stays_zero() -> None:
    before = arrays(w=[1.0, 2.0])
    clipped, metrics = clip_update(before, before.copy(), 0.1)  # equal values, not one array
    np.testing.assert_array_equal(clipped["w"], before["w"])
    assert metrics == {NORM_BELOW_KEY: 1}


def test_dtypes_are_kept() -> None:
    before = Arrays({"w": np.zeros(2, np.float32), "n": np.zeros(1, np.int64)})
    after = Arrays({"w": np.full(2, 10, np.float32), "n": np.full(1, 10, np.int64)})
    clipped, _ = clip_update(before, after, 1.0)
    assert clipped["w"].dtype == np.float32 and clipped["n"].dtype == np.int64


@pytest.mark.parametrize("norm", [0.0, -1.0, float("nan"), float("inf")])
def test_a_bound_that_is_not_positive_and_finite_is_refused(norm: float) -> None:
    with pytest.raises(ValueError, match="clipping norm must be a finite number > 0"):
        clip_update(arrays(w=[0.0]), arrays(w=[1.0]), norm)


def test_different_arrays_before_and_after_are_refused() -> None:
    with pytest.raises(ValueError, match="Hint: clip_update"):
        clip_update(arrays(w=[0.0]), arrays(v=[1.0]), 1.0)


def test_an_update_trained_in_place_is_refused_not_passed_unclipped() -> None:
    # before and after are one array: the norm would be 0 and the update, however large,
    # would pass unclipped and report itself within the bound
    arrays = Arrays({"w": np.array([30.0, 40.0])})
    with pytest.raises(ValueError, match=r"(?s)same arrays.*in place.*arrays.copy\(\)"):
        clip_update(arrays, arrays, 1.0)
    clipped, metrics = clip_update(Arrays({"w": np.zeros(2)}), arrays, 1.0)
    assert metrics == {"dp_norm_below": 0} and np.allclose(clipped["w"], [0.6, 0.8])


def test_a_frozen_layer_returned_as_it_came_is_no_change() -> None:
    received = Arrays({"trunk": np.ones(2), "head": np.zeros(2)})
    trained = Arrays({"trunk": received["trunk"], "head": np.array([3.0, 4.0])})
    clipped, metrics = clip_update(received, trained, 1.0)
    assert metrics == {"dp_norm_below": 0}
    assert clipped["trunk"].tolist() == [1.0, 1.0] and np.allclose(clipped["head"], [0.6, 0.8])
