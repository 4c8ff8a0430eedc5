"""A weighted mean summed in pieces: ``WeightedMean.partial`` exports a sum, ``merge`` adds it
into another, and the mean is the one a single accumulator gives, whatever the grouping."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pollinate.aggregate import PartialSum, WeightedMean
from pollinate.records import Arrays
from pollinate.scratch import BLOCK

LIKE = Arrays({"w": np.zeros(3, np.float32), "n": np.zeros(2, np.int64)})


def update(seed: int) -> Arrays:
    rng = np.random.default_rng(seed)
    return Arrays(
        {"w": rng.normal(size=3).astype(np.float32), "n": rng.integers(0, 100, 2, np.int64)}
    )


def test_a_partial_holds_the_float64_sums_and_the_total_weight() -> None:
    mean = WeightedMean(LIKE)
    mean.add(Arrays({"w": np.ones(3, np.float32), "n": np.array([1, 2])}), 2)
    mean.add(Arrays({"w": np.full(3, 3, np.float32), "n": np.array([4, 4])}), 1)
    part = mean.partial()
    assert part.sums["w"].dtype == np.float64 and part.sums["n"].dtype == np.float64
    assert part.sums["w"].tolist() == [5.0, 5.0, 5.0]
    assert part.sums["n"].tolist() == [6.0, 8.0]
    assert (part.total_weight, part.count) == (3.0, 2)


def test_merging_partials_gives_the_mean_of_all_their_updates() -> None:
    updates = [(update(seed), seed + 1) for seed in range(6)]
    whole = WeightedMean(LIKE)
    for arrays, weight in updates:
        whole.add(arrays, weight)
    merged = WeightedMean(LIKE)
    for group in (updates[:1], updates[1:4], updates[4:]):
        piece = WeightedMean(LIKE)
        for arrays, weight in group:
            piece.add(arrays, weight)
        merged.merge(piece.partial())
    assert (merged.count, merged.total_weight) == (6, whole.total_weight)
    for name in LIKE:
        assert merged.result()[name].dtype == LIKE[name].dtype
        assert np.array_equal(merged.result()[name], whole.result()[name])


def test_a_partial_merges_into_a_mean_that_already_holds_updates() -> None:
    mean = WeightedMean(LIKE)
    mean.add(update(0), 1)
    piece = WeightedMean(LIKE)
    piece.add(update(1), 3)
    mean.merge(piece.partial())
    reference = WeightedMean(LIKE)
    reference.add(update(0), 1)
    reference.add(update(1), 3)
    assert np.array_equal(mean.result()["w"], reference.result()["w"])
    assert (mean.count, mean.total_weight) == (2, 4.0)


def test_an_empty_partial_changes_nothing() -> None:
    empty = WeightedMean(LIKE).partial()
    assert (empty.count, empty.total_weight, len(empty.sums)) == (0, 0.0, 0)
    mean = WeightedMean(LIKE)
    mean.merge(empty)
    assert mean.count == 0
    mean.add(update(0), 2)
    mean.merge(empty)
    assert (mean.count, mean.total_weight) == (1, 2.0)


def test_partials_larger_than_a_block_merge_whole() -> None:
    like = Arrays({"w": np.zeros(BLOCK + 7, np.float32)})
    ones = Arrays({"w": np.ones(BLOCK + 7, np.float32)})
    mean, piece = WeightedMean(like), WeightedMean(like)
    mean.add(ones, 1)
    piece.add(Arrays({"w": np.full(BLOCK + 7, 4, np.float32)}), 2)
    mean.merge(piece.partial())
    assert np.all(mean.result()["w"] == 3.0)


@pytest.mark.parametrize(
    ("partial", "match"),
    [
        (PartialSum(Arrays({"w": np.zeros(3, np.float32)}), 1.0, 1), "expected float64"),
        (PartialSum(Arrays({"w": np.zeros(4)}), 1.0, 1), "shape"),
        (PartialSum(Arrays({"w": np.zeros(3)}), float("nan"), 1), "finite"),
    ],
)
def test_a_partial_that_is_not_a_means_own_sums_is_refused(partial: PartialSum, match: str) -> None:
    mean = WeightedMean(Arrays({"w": np.zeros(3, np.float32)}))
    with pytest.raises(ValueError, match=match):
        mean.merge(partial)
    assert mean.count == 0


float32_updates = st.lists(
    st.tuples(
        hnp.arrays(
            np.float32,
            8,
            elements=st.floats(-1e3, 1e3, width=32, allow_nan=False, allow_infinity=False),
        ),
        st.integers(1, 100_000),
    ),
    min_size=2,
    max_size=24,
)


@settings(max_examples=300, deadline=None)
@given(updates=float32_updates, cuts=st.lists(st.integers(0, 24), max_size=5), data=st.data())
def test_float32_means_do_not_depend_on_how_updates_are_grouped_or_merged(
    updates: list[tuple[np.ndarray, int]], cuts: list[int], data: st.DataObject
) -> None:
    """The claim the Ray engine's partial sums rest on: a seeded run gives the same model
    whether each update is folded at the hub or summed per worker and merged, in any order."""
    like = Arrays({"w": np.zeros(8, np.float32)})
    whole = WeightedMean(like)
    for array, weight in updates:
        whole.add(Arrays({"w": array}), weight)
    bounds = sorted({0, len(updates), *(min(c, len(updates)) for c in cuts)})
    pieces = []
    for start, end in itertools.pairwise(bounds):
        piece = WeightedMean(like)
        for array, weight in updates[start:end]:
            piece.add(Arrays({"w": array}), weight)
        pieces.append(piece.partial())
    merged = WeightedMean(like)
    for part in data.draw(st.permutations(pieces)):
        merged.merge(part)
    assert np.array_equal(merged.result()["w"], whole.result()["w"])
