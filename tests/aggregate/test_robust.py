"""Specification of the robust statistics: coordinate-wise median and trimmed mean, Krum,
Multi-Krum and Bulyan, on hand-computed cases and as properties."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pollinate.aggregate import (
    WeightedMean,
    bulyan,
    coordinate_median,
    krum_scores,
    multi_krum,
    robust,
    trimmed_mean,
)
from pollinate.records import Arrays


def column(*values: float, dtype: type = np.float64) -> list[Arrays]:
    """One update per value, each a model of a single one-element array."""
    return [Arrays({"w": np.array([v], dtype)}) for v in values]


def points(*xy: tuple[float, float]) -> list[Arrays]:
    """One update per point, its coordinates split over two arrays (so that distances and
    statistics must span arrays)."""
    return [Arrays({"x": np.array([x], float), "y": np.array([[y]], float)}) for x, y in xy]


def flat(arrays: Arrays) -> list[float]:
    return [float(v) for a in arrays.values() for v in a.reshape(-1)]


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of a few coordinates, so that small models span many blocks and ragged ends."""
    monkeypatch.setattr(robust, "_STACK", 16)


# --- coordinate_median -----------------------------------------------------------------------


def test_the_median_of_an_odd_number_is_the_middle_value_per_coordinate() -> None:
    # x: 1, 2, 100 -> 2 ; y: 9, -1, 0 -> 0
    got = coordinate_median(points((1, 9), (2, -1), (100, 0)))
    assert flat(got) == [2.0, 0.0]


def test_the_median_of_an_even_number_is_the_mean_of_the_two_middle_values() -> None:
    # 1, 2, 4, 50 -> (2 + 4) / 2
    assert flat(coordinate_median(column(4, 50, 1, 2))) == [3.0]


def test_an_integer_median_is_rounded_to_the_nearest_integer() -> None:
    # 0, 3 -> 1.5 -> 2 ; 0, 1, 2, 3 -> 1.5 -> 2 (half to even) ; 5, 8 -> 6.5 -> 6
    got = coordinate_median(
        [Arrays({"n": np.array([0, 0, 5], np.int32)}), Arrays({"n": np.array([3, 1, 8], np.int32)})]
    )
    assert got["n"].dtype == np.int32
    assert got["n"].tolist() == [2, 0, 6]


def test_the_median_of_one_update_is_that_update() -> None:
    update = Arrays({"w": np.arange(6.0).reshape(2, 3), "n": np.array(4, np.int64)})
    assert coordinate_median([update]) == update


# --- trimmed_mean ----------------------------------------------------------------------------


def test_trimming_a_fifth_of_five_drops_the_largest_and_smallest_value() -> None:
    # x: -1e9, 1, 2, 3, 4 -> (1 + 2 + 3) / 3 ; y: 0, 0, 3, 6, 1e9 -> (0 + 3 + 6) / 3
    got = trimmed_mean(points((1, 0), (-1e9, 6), (3, 1e9), (2, 0), (4, 3)), beta=0.2)
    assert flat(got) == [2.0, 3.0]


def test_trimming_nothing_is_the_plain_mean() -> None:
    assert flat(trimmed_mean(column(1, 2, 3, 10), beta=0.0)) == [4.0]


def test_beta_times_n_is_rounded_down() -> None:
    # 0.2 * 4 = 0.8 -> nothing dropped: (1 + 2 + 3 + 10) / 4
    assert flat(trimmed_mean(column(1, 2, 3, 10), beta=0.2)) == [4.0]


def test_beta_is_taken_as_the_decimal_written() -> None:
    # 0.3 * 10 is 3.0000000000000004 in binary floats and 0.7 * 10 is 6.999..: 3 dropped at
    # each end either way, leaving 3, 4, 5, 6
    values = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert flat(trimmed_mean(column(*values), beta=0.3)) == [4.5]


def test_trimming_almost_half_is_the_median() -> None:
    assert flat(trimmed_mean(column(7, -3, 100, 5, 6), beta=0.4)) == [6.0]


@pytest.mark.parametrize("beta", [0.5, -0.1, 1.0, float("nan")])
def test_a_beta_outside_zero_to_one_half_is_refused(beta: float) -> None:
    with pytest.raises(ValueError, match=r"beta must be a finite number in \[0, 0.5\).*\nHint: "):
        trimmed_mean(column(1, 2, 3), beta)


@pytest.mark.parametrize("beta", [True, "0.1", None])
def test_a_beta_that_is_not_a_number_is_a_type_error(beta: object) -> None:
    with pytest.raises(TypeError, match="Hint: "):
        trimmed_mean(column(1, 2, 3), beta)  # type: ignore[arg-type]


# --- krum_scores and multi_krum --------------------------------------------------------------

# Squared distances of the points below:
#        (0,0) (1,0) (0,2) (10,10) (1,1)
# (0,0)    -     1     4     200     2
# (1,0)    1     -     5     181     1
# (0,2)    4     5     -     164     2
# (10,10) 200  181   164      -     162
# (1,1)    2     1     2     162     -
# With n = 5 and f = 1 each score sums the n - f - 2 = 2 nearest.
FIVE = points((0, 0), (1, 0), (0, 2), (10, 10), (1, 1))


def test_krum_scores_sum_the_squared_distances_to_the_nearest_neighbours() -> None:
    np.testing.assert_allclose(krum_scores(FIVE, f=1), [1 + 2, 1 + 1, 2 + 4, 162 + 164, 1 + 2])


def test_krum_scores_with_f_zero_take_n_minus_two_neighbours() -> None:
    # 3 nearest: (0,0): 1 + 2 + 4 ; (1,0): 1 + 1 + 5 ; (0,2): 2 + 4 + 5 ; (10,10): 162 + 164 +
    # 181 ; (1,1): 1 + 2 + 2
    np.testing.assert_allclose(krum_scores(FIVE, f=0), [7, 7, 11, 507, 5])


def test_krum_selects_the_best_scored_update_itself() -> None:
    assert multi_krum(FIVE, [1, 1, 1, 1, 1], f=1, m=1) == FIVE[1]


def test_multi_krum_averages_the_m_best_by_weight() -> None:
    # the best 3: (1,0) score 2, then (0,0) and (1,1) tied at 3, so both
    # (1 * (0,0) + 2 * (1,0) + 1 * (1,1)) / 4 = (0.75, 0.25)
    got = multi_krum(FIVE, [1, 2, 1, 1, 1], f=1, m=3)
    assert flat(got) == [0.75, 0.25]


def test_equal_scores_are_decided_by_the_next_nearest_neighbour() -> None:
    # (0,0) and (1,1) both score 3; their third nearest are at 4 and 2: m = 2 takes (1,0)
    # and (1,1), whatever their order
    assert flat(multi_krum(FIVE, [1, 1, 1, 1, 1], f=1, m=2)) == [1.0, 0.5]
    assert flat(multi_krum(FIVE[::-1], [1, 1, 1, 1, 1], f=1, m=2)) == [1.0, 0.5]


def test_multi_krum_of_all_updates_is_the_weighted_mean() -> None:
    weights = [3, 1, 4, 1, 5]
    mean = WeightedMean(FIVE[0])
    for update, weight in zip(FIVE, weights, strict=True):
        mean.add(update, weight)
    assert multi_krum(FIVE, weights, f=1, m=5) == mean.result()


@pytest.mark.parametrize(("n", "f"), [(4, 1), (6, 2), (2, 0)])
def test_krum_needs_more_than_2f_plus_2_updates(n: int, f: int) -> None:
    with pytest.raises(ValueError, match=rf"more than 2f \+ 2 = {2 * f + 2} updates.*\nHint: "):
        krum_scores(column(*range(n)), f)


def test_krum_with_exactly_2f_plus_3_updates_works() -> None:
    assert krum_scores(column(*range(5)), f=1).shape == (5,)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"f": -1, "m": 1}, ValueError),
        ({"f": 1.0, "m": 1}, TypeError),
        ({"f": 1, "m": 0}, ValueError),
        ({"f": 1, "m": True}, TypeError),
        ({"f": 1, "m": 6}, ValueError),
    ],
)
def test_multi_krum_refuses_impossible_arguments(kwargs: dict, error: type) -> None:
    with pytest.raises(error):
        multi_krum(FIVE, [1] * 5, **kwargs)


def test_multi_krum_needs_one_weight_per_update() -> None:
    with pytest.raises(ValueError, match="5 updates but 4 weights"):
        multi_krum(FIVE, [1] * 4, f=1, m=1)


# --- bulyan ----------------------------------------------------------------------------------


def test_bulyan_hand_case() -> None:
    # n = 7, f = 1: theta = 5 selected by repeated Krum, beta = 3 averaged per coordinate.
    # Krum on all 7 (4 neighbours): 3 and 4 score 1 + 1 + 4 + 4; their 5th nearest tie too
    # (9), their 6th is the outlier, nearer to 4 -> 4. On 6 (3 neighbours): 3 scores 9 -> 3.
    # On 5 (2): 2 and 5 score 10 and tie at 16, 5 is nearer the outlier -> 5. On 4 (1): 1
    # and 2 score 1; 2's next is 6 at 16, 1's at 25 -> 2. On 3 (1): 1 and 6 tie at 25, 6 is
    # nearer the outlier -> 6. The 3 selected values nearest their median 4: 3, 4, 5.
    # The second coordinate is twice the first: distances scale by 5, the selection stays.
    xs = points(*[(v, 2 * v) for v in (1, 2, 3, 4, 5, 6)], (1e9, 2e9))
    assert flat(bulyan(xs, f=1)) == [4.0, 8.0]


def test_bulyan_averages_the_values_nearest_the_median_per_coordinate() -> None:
    # f = 1: the two far updates are never selected, as long as a near one is left (the last
    # near one is ~141 from each, they are 200 apart). Of the five near ones, per coordinate
    # the 3 values nearest the median: x 0.1, 0.2, 0.3 around 0.2; y 0, 0, 0.2 around 0.
    near = [(0.0, 0.0), (0.1, 0.0), (0.2, 0.9), (0.3, -0.9), (0.4, 0.2)]
    xs = points((100, 100), *near, (-100, 100))
    np.testing.assert_allclose(flat(bulyan(xs, f=1)), [0.2, 0.2 / 3], rtol=1e-12)


def test_bulyan_with_f_zero_is_the_plain_mean() -> None:
    assert flat(bulyan(column(1, 2, 6), f=0)) == [3.0]


@pytest.mark.parametrize(("n", "f"), [(3, 0), (7, 1), (8, 1), (11, 2), (6, 1), (10, 2), (2, 0)])
def test_bulyan_needs_n_at_least_4f_plus_3(n: int, f: int) -> None:
    updates = column(*range(n))
    if n >= 4 * f + 3:
        assert bulyan(updates, f)["w"].shape == (1,)
        return
    with pytest.raises(ValueError, match=rf"n >= 4f \+ 3 = {4 * f + 3} .*got n={n}.*\nHint: "):
        bulyan(updates, f)


# --- all of them: errors, dtypes, shapes, blocks ---------------------------------------------


Combine = Callable[[list[Arrays]], Arrays]

ALL: dict[str, Combine] = {
    "median": lambda u: coordinate_median(u),
    "trimmed": lambda u: trimmed_mean(u, 0.2),
    "krum": lambda u: multi_krum(u, [1] * len(u), 1, 1),
    "multikrum": lambda u: multi_krum(u, [1] * len(u), 1, 3),
    "bulyan": lambda u: bulyan(u, 1),
}
every_function = pytest.mark.parametrize("fn", ALL.values(), ids=ALL.keys())


def model_updates(n: int, seed: int = 0) -> list[Arrays]:
    rng = np.random.default_rng(seed)
    return [
        Arrays(
            {
                "conv": rng.standard_normal((3, 4, 5)).astype(np.float32),
                "bias": rng.standard_normal(5),
                "half": rng.standard_normal(7).astype(np.float16),
                "steps": rng.integers(0, 100, 3).astype(np.int64),
                "bytes": rng.integers(0, 255, 4).astype(np.uint8),
                "scalar": np.array(rng.standard_normal(), np.float32),
                "empty": np.zeros((0, 3), np.float32),
            }
        )
        for _ in range(n)
    ]


@every_function
def test_names_shapes_and_dtypes_are_those_of_the_updates(fn: Combine) -> None:
    updates = model_updates(7)
    got = fn(updates)
    assert got.names == updates[0].names
    for name, a in updates[0].items():
        assert (got[name].dtype, got[name].shape) == (a.dtype, a.shape), name


@every_function
def test_no_updates_is_a_value_error(fn: Combine) -> None:
    with pytest.raises(ValueError):
        fn([])


@every_function
def test_updates_of_different_models_are_refused(fn: Combine) -> None:
    updates = model_updates(7)
    updates[4] = Arrays({**updates[4], "bias": np.zeros(6)})
    with pytest.raises(ValueError, match="update 4 has shape \\(6,\\) for 'bias'"):
        fn(updates)


@every_function
def test_complex_arrays_are_refused(fn: Combine) -> None:
    with pytest.raises(TypeError, match="complex"):
        fn([Arrays({"c": np.array([1j])}) for _ in range(7)])


@every_function
def test_results_do_not_depend_on_the_block_size(fn: Combine, small_blocks: None) -> None:
    updates = model_updates(7, seed=3)
    in_blocks = fn(updates)
    robust._STACK = 1 << 30  # one block per array; monkeypatch restores the value afterwards
    whole = fn(updates)
    for name in whole:
        np.testing.assert_allclose(in_blocks[name], whole[name], rtol=1e-6, err_msg=name)


@every_function
def test_results_are_the_same_bits_whatever_the_number_of_threads(
    fn: Combine, small_blocks: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    updates = model_updates(7, seed=5)
    monkeypatch.setattr(robust, "_THREADS", 1)
    alone, distances = fn(updates), robust.median_distances(updates)
    monkeypatch.setattr(robust, "_THREADS", 3)
    shared = fn(updates)
    for name in alone:
        assert alone[name].tobytes() == shared[name].tobytes(), name
    assert robust.median_distances(updates).tobytes() == distances.tobytes()


@pytest.mark.parametrize("rows", [10, 40])
def test_float32_median_distances_are_those_of_float64_within_rounding(
    rows: int, small_blocks: None
) -> None:
    rng = np.random.default_rng(rows)
    center = rng.standard_normal(5000)
    wide = [Arrays({"w": center + rng.standard_normal(5000) * (1 + k)}) for k in range(rows)]
    narrow = [Arrays({"w": u["w"].astype(np.float32)}) for u in wide]
    exact = robust.median_distances([Arrays({"w": u["w"].astype(np.float64)}) for u in narrow])
    np.testing.assert_allclose(robust.median_distances(narrow), exact, rtol=1e-5)


def test_float32_median_distances_of_huge_finite_updates_are_finite() -> None:
    spread = [Arrays({"w": np.full(100, 1e19 * (1 + k), np.float32)}) for k in range(7)]
    wide = [Arrays({"w": u["w"].astype(np.float64)}) for u in spread]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        distances = robust.median_distances(spread)
    np.testing.assert_allclose(distances, robust.median_distances(wide), rtol=1e-6)


# --- the sorting network down the rows ------------------------------------------------------


@pytest.mark.parametrize("rows", range(1, 15))
def test_the_sorting_network_sorts_every_input_of_zeros_and_ones(rows: int) -> None:
    # a comparator network that sorts every 0/1 input sorts every input (the 0-1 principle)
    columns = np.arange(2**rows)
    stack = ((columns[None, :] >> np.arange(rows)[:, None]) & 1).astype(np.float32)
    robust._sort_columns(stack)
    assert (np.diff(stack, axis=0) >= 0).all()
    assert (stack.sum(axis=0) == [bin(c).count("1") for c in columns]).all()


@pytest.mark.parametrize("rows", [2, 9, 32, 33, 64])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_median_of_a_stack_is_numpys_on_either_side_of_the_network(
    rows: int, dtype: type
) -> None:
    stack = np.random.default_rng(rows).standard_normal((rows, 999)).astype(dtype)
    expected = np.median(stack.astype(np.float64), axis=0)
    np.testing.assert_array_equal(robust._median(stack.copy()), expected)


@pytest.mark.parametrize("rows", [15, 16, 17, 24, 31, 32, 33])
def test_columns_of_more_rows_are_sorted_as_numpy_sorts_them(rows: int) -> None:
    stack = np.random.default_rng(rows).integers(-5, 5, (rows, 500)).astype(np.float64)
    expected = np.sort(stack, axis=0)
    robust._sort_columns(stack)
    np.testing.assert_array_equal(stack, expected)


def test_a_column_keeps_its_values_when_zeros_differ_in_sign() -> None:
    for column in ([0.0, -0.0, 1.0], [-0.0, 0.0, -1.0]):
        stack = np.array(column)[:, None].repeat(3, axis=1)
        robust._sort_columns(stack)
        assert np.signbit(stack[:, 0]).sum() == (1 if -1.0 in column else 0)  # no -0.0
        np.testing.assert_array_equal(stack[:, 0], sorted(column))


def test_a_column_with_nan_sorts_it_last_as_numpy_does() -> None:
    stack = np.array([[3.0, np.nan], [np.nan, 1.0], [1.0, 2.0]])
    robust._sort_columns(stack)
    np.testing.assert_array_equal(stack, [[1.0, 1.0], [3.0, 2.0], [np.nan, np.nan]])


def test_the_inputs_are_not_written() -> None:
    updates = model_updates(7)
    for u in updates:
        for a in u.values():
            a.setflags(write=False)
    for fn in ALL.values():
        fn(updates)


# --- against a straightforward reference (whole models stacked) ------------------------------


def _reference_rows(xs: list[np.ndarray]) -> list[np.ndarray]:
    """Each update's squared distances to the others, nearest first."""
    d = np.array([[np.sum((a - b) ** 2) for b in xs] for a in xs])
    return [np.sort(np.delete(d[i], i)) for i in range(len(xs))]


def _reference_scores(xs: list[np.ndarray], f: int) -> np.ndarray:
    k = max(len(xs) - f - 2, 1)
    return np.array([row[:k].sum() for row in _reference_rows(xs)])


def _reference_best(xs: list[np.ndarray], f: int) -> int:
    """Krum's choice: the lowest score; of equal ones, the nearer next-nearest, and so on."""
    if len(xs) == 1:
        return 0
    k = min(max(len(xs) - f - 2, 1), len(xs) - 1)
    keys = [(row[:k].sum(), *row[k:]) for row in _reference_rows(xs)]
    return min(range(len(xs)), key=lambda i: keys[i])


def _reference_bulyan(xs: list[np.ndarray], f: int) -> np.ndarray:
    left, selected = list(range(len(xs))), []
    for _ in range(len(xs) - 2 * f):
        selected.append(left.pop(_reference_best([xs[i] for i in left], f)))
    s = np.sort(np.stack([xs[i] for i in selected]), axis=0)
    med = np.median(s, axis=0)
    beta = len(selected) - 2 * f
    nearest = np.argsort(np.abs(s - med), axis=0, kind="stable")[:beta]
    return np.take_along_axis(s, nearest, axis=0).mean(axis=0)


_clouds = st.integers(7, 12).flatmap(
    lambda n: hnp.arrays(
        np.float64, (n, 9), elements=st.floats(-100, 100, allow_nan=False, allow_subnormal=False)
    )
)


@settings(max_examples=40, deadline=None)
@given(stack=_clouds)
def test_every_function_matches_the_reference_across_blocks(stack: np.ndarray) -> None:
    original, robust._STACK = robust._STACK, 4 * len(stack)  # 4 coordinates a block: 4 + 4 + 1
    try:
        xs = [Arrays({"a": row[:5], "b": row[5:].reshape(2, 2)}) for row in stack]
        np.testing.assert_allclose(flat(coordinate_median(xs)), np.median(stack, axis=0))
        k = int(0.2 * len(stack))
        trimmed = np.sort(stack, axis=0)[k : len(stack) - k].mean(axis=0)
        np.testing.assert_allclose(flat(trimmed_mean(xs, 0.2)), trimmed, rtol=1e-12)
        scale = 1 + float(np.abs(stack).max()) ** 2
        np.testing.assert_allclose(
            krum_scores(xs, 1), _reference_scores(list(stack), 1), rtol=1e-9, atol=1e-9 * scale
        )
    finally:
        robust._STACK = original


@settings(max_examples=40, deadline=None)
@given(
    stack=st.integers(7, 12).flatmap(
        lambda n: hnp.arrays(np.int64, (n, 9), elements=st.integers(-5, 5))
    ),
    f=st.integers(0, 2),
)
def test_bulyan_matches_the_reference_even_with_many_ties(stack: np.ndarray, f: int) -> None:
    # small integers: every distance is exact, so ties are ties in both, decided alike
    if len(stack) < 4 * f + 3:
        f = 1
    xs = [Arrays({"a": row[:5].astype(float), "b": row[5:].astype(float)}) for row in stack]
    np.testing.assert_allclose(
        flat(bulyan(xs, f)), _reference_bulyan(list(stack.astype(float)), f), rtol=1e-12
    )


@pytest.mark.parametrize("seed", range(10))
def test_bulyan_matches_the_reference_on_random_updates(seed: int, small_blocks: None) -> None:
    stack = np.random.default_rng(seed).standard_normal((11, 40)) * 10.0 ** (seed % 4)
    xs = [Arrays({"a": row[:30].reshape(5, 6), "b": row[30:]}) for row in stack]
    np.testing.assert_allclose(flat(bulyan(xs, 2)), _reference_bulyan(list(stack), 2), rtol=1e-9)


# --- properties ------------------------------------------------------------------------------

_honest = hnp.arrays(
    np.float64, (4, 6), elements=st.floats(-1e3, 1e3, allow_nan=False, allow_subnormal=False)
)
_magnitudes = hnp.arrays(np.float64, 6, elements=st.floats(1e4, 1e300))
_signs = hnp.arrays(np.float64, 6, elements=st.sampled_from([-1.0, 1.0]))


@settings(max_examples=60, deadline=None)
@given(honest=_honest, magnitudes=_magnitudes, signs=_signs, at=st.integers(0, 4))
def test_one_outlier_among_five_however_large_does_not_move_median_or_trimmed_mean(
    honest: np.ndarray, magnitudes: np.ndarray, signs: np.ndarray, at: int
) -> None:
    # only the side of the honest values the outlier lies on counts, not how far out it is
    def with_outlier(outlier: np.ndarray) -> list[Arrays]:
        rows = [*honest[:at], outlier, *honest[at:]]
        return [Arrays({"w": r[:4], "s": r[4:].reshape(1, 2)}) for r in rows]

    far, near = with_outlier(signs * magnitudes), with_outlier(signs * 1e4)
    assert coordinate_median(far) == coordinate_median(near)
    assert trimmed_mean(far, 0.2) == trimmed_mean(near, 0.2)
    median = flat(coordinate_median(far))
    assert np.all(honest.min(axis=0) <= median) and np.all(median <= honest.max(axis=0))


@settings(max_examples=60, deadline=None)
@given(
    honest=hnp.arrays(np.float64, (4, 6), elements=st.floats(-1, 1, allow_subnormal=False)),
    magnitudes=hnp.arrays(np.float64, 6, elements=st.floats(100, 1e150)),
    signs=_signs,
    at=st.integers(0, 4),
)
def test_krum_never_selects_an_outlier_among_five_with_f_one(
    honest: np.ndarray, magnitudes: np.ndarray, signs: np.ndarray, at: int
) -> None:
    # honest updates lie within 2 sqrt(6) < 5 of each other, the outlier at least 99 away
    rows = [*honest[:at], signs * magnitudes, *honest[at:]]
    xs = [Arrays({"w": r}) for r in rows]
    scores = krum_scores(xs, f=1)
    assert int(np.argmax(scores)) == at
    chosen = multi_krum(xs, [1] * 5, f=1, m=1)
    assert any(chosen == x for i, x in enumerate(xs) if i != at)
    assert np.all(np.abs(multi_krum(xs, [1] * 5, f=1, m=4)["w"]) <= 1)


_cloud = hnp.arrays(
    np.float64, (7, 5), elements=st.floats(-1e6, 1e6, allow_nan=False, allow_subnormal=False)
)


@settings(max_examples=40, deadline=None)
@given(stack=_cloud, data=st.data())
def test_the_order_of_the_updates_does_not_change_the_order_statistics(
    stack: np.ndarray, data: st.DataObject
) -> None:
    order = data.draw(st.permutations(range(len(stack))))
    xs = [Arrays({"w": r[:3], "v": r[3:].astype(np.float32)}) for r in stack]
    shuffled = [xs[i] for i in order]
    # each coordinate is sorted first: equal bit for bit, ties and all
    assert coordinate_median(shuffled) == coordinate_median(xs)
    assert trimmed_mean(shuffled, 0.3) == trimmed_mean(xs, 0.3)
    scores = krum_scores(xs, 1)
    np.testing.assert_allclose(krum_scores(shuffled, 1), scores[order], rtol=1e-9, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), data=st.data())
def test_the_order_of_the_updates_does_not_change_krums_or_bulyans_choice(
    seed: int, data: st.DataObject
) -> None:
    # Of equal Krum scores the earlier update wins, by design (the strategies hand updates
    # over in node-id order). Continuous random updates have no ties.
    stack = np.random.default_rng(seed).standard_normal((7, 5))
    order = data.draw(st.permutations(range(len(stack))))
    xs = [Arrays({"w": r[:3], "v": r[3:].astype(np.float32)}) for r in stack]
    shuffled = [xs[i] for i in order]
    weights = [1, 2, 3, 4, 5, 6, 7]
    reordered = [weights[i] for i in order]
    assert multi_krum(shuffled, reordered, 1, 1) == multi_krum(xs, weights, 1, 1)
    for name, a in multi_krum(xs, weights, 1, 4).items():
        np.testing.assert_allclose(multi_krum(shuffled, reordered, 1, 4)[name], a, rtol=1e-6)
    for name, a in bulyan(xs, 1).items():
        np.testing.assert_allclose(bulyan(shuffled, 1)[name], a, rtol=1e-6)


def test_a_stacks_rows_are_an_odd_number_of_cache_lines_apart() -> None:
    """Rows a multiple of 4 KiB apart share cache sets: numpy's sort down the columns of 64
    rows ran 8x slower."""
    updates = [Arrays({"w": np.zeros(1 << 16, np.float32)}) for _ in range(64)]

    def row_stride(_: str, __: int, stack: np.ndarray) -> int:
        return int(stack.strides[0])

    strides = list(robust._each_block(updates, row_stride, robust._as_sent_if_float32))
    assert strides and all(s % 128 == 64 for s in strides)
    for columns in (1, 16, 12288, 1 << 14, 17408):
        copied = robust._copy(np.ones((3, columns), np.float64))
        assert copied.strides[0] % 128 == 64 and (copied == 1).all()
