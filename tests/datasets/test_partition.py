"""Specification of the partitioners in ``pollinate.datasets``."""

from __future__ import annotations

import doctest
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pollinate.datasets
from pollinate.datasets import by_group, dirichlet, iid, label_counts, shards
from pollinate.datasets import partition as partition_module

Partitions = list[npt.NDArray[np.int64]]
seeds = st.integers(min_value=0, max_value=2**32 - 1)


@st.composite
def labelled(draw: st.DrawFn, max_classes: int = 6) -> tuple[npt.NDArray[np.int64], int]:
    """Integer labels (1..200 samples) and a number of partitions that fits them."""
    labels = draw(st.lists(st.integers(0, max_classes - 1), min_size=1, max_size=200))
    num_partitions = draw(st.integers(1, len(labels)))
    return np.array(labels, dtype=np.int64), num_partitions


def assert_is_partition(parts: Partitions, n_samples: int, num_partitions: int) -> None:
    """Sorted int64 index arrays, disjoint, covering range(n_samples) exactly."""
    assert len(parts) == num_partitions
    for part in parts:
        assert part.dtype == np.int64 and part.ndim == 1
        assert np.all(np.diff(part) > 0), "indices must be sorted ascending and unique"
    everything = np.sort(np.concatenate(parts))
    np.testing.assert_array_equal(everything, np.arange(n_samples))


def mean_distance_from_global(labels: npt.NDArray[np.int64], parts: Partitions) -> float:
    """Mean total-variation distance of each partition's label distribution from the global one."""
    counts = label_counts(labels, parts)
    local = counts / counts.sum(axis=1, keepdims=True)
    overall = np.bincount(labels) / labels.size
    return float(0.5 * np.abs(local - overall).sum(axis=1).mean())


def same(a: Partitions, b: Partitions) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


# --- public face -------------------------------------------------------------------------------


def test_public_api_is_pinned() -> None:
    assert pollinate.datasets.__all__ == [
        "by_group",
        "dirichlet",
        "iid",
        "label_counts",
        "partition_summary",
        "shards",
        "split_dataset",
    ]


def test_docstring_examples_run() -> None:
    result = doctest.testmod(partition_module, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 5 and result.failed == 0


# --- every partitioner: disjoint, complete, sorted -------------------------------------------


@given(n_samples=st.integers(1, 500), data=st.data(), seed=seeds)
def test_iid_is_a_partition(n_samples: int, data: st.DataObject, seed: int) -> None:
    num_partitions = data.draw(st.integers(1, n_samples))
    assert_is_partition(iid(n_samples, num_partitions, seed=seed), n_samples, num_partitions)


@given(case=labelled(), alpha=st.floats(0.05, 100), seed=seeds)
def test_dirichlet_is_a_partition(
    case: tuple[npt.NDArray[np.int64], int], alpha: float, seed: int
) -> None:
    labels, num_partitions = case
    parts = dirichlet(labels, num_partitions, alpha, seed=seed, min_size=0)
    assert_is_partition(parts, labels.size, num_partitions)


@given(case=labelled(), classes_per_partition=st.integers(1, 4), seed=seeds)
def test_shards_is_a_partition(
    case: tuple[npt.NDArray[np.int64], int], classes_per_partition: int, seed: int
) -> None:
    labels, num_partitions = case
    if num_partitions * classes_per_partition > labels.size:
        classes_per_partition = 1
    parts = shards(labels, num_partitions, classes_per_partition, seed=seed)
    assert_is_partition(parts, labels.size, num_partitions)


@given(groups=st.lists(st.integers(-3, 3), min_size=1, max_size=100))
def test_by_group_is_a_partition(groups: list[int]) -> None:
    values, parts = by_group(np.array(groups))
    assert_is_partition(parts, len(groups), len(values))


# --- determinism ---------------------------------------------------------------------------------

LABELS = np.repeat(np.arange(10), 30)

SEEDED: dict[str, Callable[[int], Partitions]] = {
    "iid": lambda seed: iid(300, 7, seed=seed),
    "dirichlet": lambda seed: dirichlet(LABELS, 7, alpha=0.5, seed=seed),
    "shards": lambda seed: shards(LABELS, 7, 2, seed=seed),
}


@pytest.mark.parametrize("name", SEEDED)
def test_same_seed_gives_identical_partitions(name: str) -> None:
    assert same(SEEDED[name](3), SEEDED[name](3))


@pytest.mark.parametrize("name", SEEDED)
def test_different_seeds_give_different_partitions(name: str) -> None:
    assert not same(SEEDED[name](3), SEEDED[name](4))


@pytest.mark.parametrize("name", SEEDED)
def test_independent_of_global_random_state(name: str) -> None:
    np.random.seed(0)
    first = SEEDED[name](3)
    after_first = np.random.get_state()[1].copy()  # type: ignore[index]
    np.random.seed(1)
    assert same(first, SEEDED[name](3))
    np.random.seed(0)
    SEEDED[name](3)
    np.testing.assert_array_equal(np.random.get_state()[1], after_first)  # type: ignore[index]


# --- iid -----------------------------------------------------------------------------------------


@given(n_samples=st.integers(1, 500), data=st.data(), seed=seeds)
def test_iid_sizes_differ_by_at_most_one(n_samples: int, data: st.DataObject, seed: int) -> None:
    num_partitions = data.draw(st.integers(1, n_samples))
    sizes = [len(p) for p in iid(n_samples, num_partitions, seed=seed)]
    assert max(sizes) - min(sizes) <= 1


# --- dirichlet -----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_dirichlet_small_alpha_is_more_skewed_than_large_alpha(seed: int) -> None:
    labels = np.repeat(np.arange(10), 100)
    skewed = mean_distance_from_global(labels, dirichlet(labels, 10, alpha=0.1, seed=seed))
    middle = mean_distance_from_global(labels, dirichlet(labels, 10, alpha=1.0, seed=seed))
    near_iid = mean_distance_from_global(labels, dirichlet(labels, 10, alpha=100, seed=seed))
    assert skewed > middle > near_iid


@settings(max_examples=30)
@given(min_size=st.integers(0, 50), alpha=st.sampled_from([0.5, 1.0, 10.0]), seed=seeds)
def test_dirichlet_honours_min_size(min_size: int, alpha: float, seed: int) -> None:
    labels = np.repeat(np.arange(10), 100)
    parts = dirichlet(labels, 10, alpha, seed=seed, min_size=min_size)
    assert min(len(p) for p in parts) >= min_size


def test_dirichlet_impossible_setting_says_what_to_change() -> None:
    labels = np.repeat([0, 1], 50)
    with pytest.raises(ValueError, match=r"(?s)alpha=0\.01.*100 draws.*Hint: raise alpha"):
        dirichlet(labels, 50, alpha=0.01)


def test_dirichlet_min_size_beyond_the_data_fails_at_once() -> None:
    with pytest.raises(ValueError, match=r"(?s)min_size=11 times num_partitions=10.*Hint"):
        dirichlet(np.zeros(100, dtype=np.int64), 10, alpha=1.0, min_size=11)


def test_dirichlet_accepts_any_label_values() -> None:
    labels = np.array(["cat", "dog", "cat", "emu", "dog", "emu"] * 5)
    assert_is_partition(dirichlet(labels, 3, alpha=1.0), labels.size, 3)


def test_dirichlet_demo_split_of_digits_leaves_no_partition_empty() -> None:
    datasets = pytest.importorskip("sklearn.datasets")
    labels = datasets.load_digits().target
    parts = dirichlet(labels, 20, alpha=0.5, seed=0)
    assert_is_partition(parts, labels.size, 20)
    assert all(len(p) > 0 for p in parts)


# --- shards --------------------------------------------------------------------------------------


@st.composite
def aligned_classes(draw: st.DrawFn) -> tuple[npt.NDArray[np.int64], int, int]:
    """Labels whose class counts are whole multiples of the shard size (as MNIST in the paper)."""
    num_partitions = draw(st.integers(1, 8))
    classes_per_partition = draw(st.integers(1, 4))
    num_shards = num_partitions * classes_per_partition
    shard_size = draw(st.integers(1, 10))
    shards_per_class = draw(st.lists(st.integers(1, 4), min_size=1, max_size=num_shards))
    shards_per_class[-1] += num_shards - sum(shards_per_class)
    counts = [k * shard_size for k in shards_per_class if k > 0]
    if sum(counts) != num_shards * shard_size:  # the last class went negative: one class only
        counts = [num_shards * shard_size]
    labels = np.repeat(np.arange(len(counts)), counts)
    return labels, num_partitions, classes_per_partition


@given(case=aligned_classes(), seed=seeds)
def test_shards_aligned_with_classes_hold_at_most_classes_per_partition_labels(
    case: tuple[npt.NDArray[np.int64], int, int], seed: int
) -> None:
    labels, num_partitions, classes_per_partition = case
    counts = label_counts(labels, shards(labels, num_partitions, classes_per_partition, seed=seed))
    assert (counts > 0).sum(axis=1).max() <= classes_per_partition


@st.composite
def no_small_classes(draw: st.DrawFn) -> tuple[npt.NDArray[np.int64], int, int]:
    """Labels where every class has at least ceil(n_samples / num_shards) samples."""
    num_partitions = draw(st.integers(1, 8))
    classes_per_partition = draw(st.integers(1, 4))
    num_shards = num_partitions * classes_per_partition
    n_classes = draw(st.integers(1, num_shards))
    # Classes of size largest_shard + extra, with num_shards <= n_samples <= num_shards *
    # largest_shard, so no shard is empty and none is larger than largest_shard.
    fewest = -(-num_shards // n_classes)
    largest_shard = draw(st.integers(fewest, fewest + 10))
    spare = largest_shard * (num_shards - n_classes) // n_classes
    extra = draw(st.lists(st.integers(0, spare), min_size=n_classes, max_size=n_classes))
    labels = np.repeat(np.arange(n_classes), [largest_shard + e for e in extra])
    return labels, num_partitions, classes_per_partition


@given(case=no_small_classes(), seed=seeds)
def test_shards_hold_at_most_twice_classes_per_partition_labels_when_no_class_is_small(
    case: tuple[npt.NDArray[np.int64], int, int], seed: int
) -> None:
    labels, num_partitions, classes_per_partition = case
    num_shards = num_partitions * classes_per_partition
    assert np.bincount(labels).min() >= -(-labels.size // num_shards)
    counts = label_counts(labels, shards(labels, num_partitions, classes_per_partition, seed=seed))
    assert (counts > 0).sum(axis=1).max() <= 2 * classes_per_partition


def test_shards_follow_mcmahan_mnist_recipe() -> None:
    # 10 balanced classes, 100 clients x 2 shards: every client sees at most 2 digits.
    labels = np.repeat(np.arange(10), 200)
    parts = shards(labels, 100, 2, seed=0)
    assert {len(p) for p in parts} == {20}
    assert (label_counts(labels, parts) > 0).sum(axis=1).max() <= 2


# --- by_group ------------------------------------------------------------------------------------


@given(groups=st.lists(st.sampled_from(["h1", "h2", "h10", "clinic"]), min_size=1, max_size=60))
def test_by_group_matches_groups_exactly(groups: list[str]) -> None:
    column = np.array(groups)
    values, parts = by_group(column)
    assert values.tolist() == sorted(set(groups))
    for value, part in zip(values, parts, strict=True):
        np.testing.assert_array_equal(part, np.flatnonzero(column == value))


def test_by_group_orders_partitions_by_group_value() -> None:
    values, parts = by_group([30, 10, 20, 10, 30])
    assert values.tolist() == [10, 20, 30]
    assert [p.tolist() for p in parts] == [[1, 3], [2], [0, 4]]


# --- label_counts --------------------------------------------------------------------------------


def test_label_counts_counts_each_class_per_partition() -> None:
    labels = np.array([0, 2, 2, 1, 0, 2])
    parts = [np.array([0, 1, 2]), np.array([3, 4, 5])]
    np.testing.assert_array_equal(label_counts(labels, parts), [[1, 0, 2], [1, 1, 1]])
    assert label_counts(labels, parts, num_classes=5).shape == (2, 5)


@given(case=labelled(), seed=seeds)
def test_label_counts_rows_and_columns_add_up(
    case: tuple[npt.NDArray[np.int64], int], seed: int
) -> None:
    labels, num_partitions = case
    parts = iid(labels.size, num_partitions, seed=seed)
    counts = label_counts(labels, parts)
    assert counts.sum(axis=1).tolist() == [len(p) for p in parts]
    np.testing.assert_array_equal(counts.sum(axis=0), np.bincount(labels))


# --- errors that teach ---------------------------------------------------------------------------

Y = np.repeat(np.arange(3), 4)

BAD_CALLS: list[tuple[str, Callable[[], Any], str]] = [
    ("iid: too many partitions", lambda: iid(10, 11), r"num_partitions=11 .*10 samples"),
    ("iid: zero partitions", lambda: iid(10, 0), r"num_partitions must be an int >= 1, got 0"),
    ("iid: no samples", lambda: iid(0, 1), r"n_samples must be an int >= 1, got 0"),
    (
        "dirichlet: alpha zero",
        lambda: dirichlet(Y, 3, alpha=0.0),
        r"alpha must be a finite number > 0, got 0\.0",
    ),
    (
        "dirichlet: alpha negative",
        lambda: dirichlet(Y, 3, alpha=-1),
        r"alpha must be a finite number > 0, got -1",
    ),
    (
        "dirichlet: alpha inf",
        lambda: dirichlet(Y, 3, alpha=float("inf")),
        r"alpha must be a finite number > 0, got inf",
    ),
    (
        "dirichlet: min_size",
        lambda: dirichlet(Y, 3, 1.0, min_size=-1),
        r"min_size must be an int >= 0, got -1",
    ),
    ("dirichlet: 2-D labels", lambda: dirichlet(Y.reshape(3, 4), 3, 1.0), r"shape \(3, 4\)"),
    ("dirichlet: empty labels", lambda: dirichlet(np.array([]), 1, 1.0), r"shape \(0,\)"),
    ("dirichlet: too many partitions", lambda: dirichlet(Y, 13, 1.0), r"num_partitions=13"),
    (
        "shards: zero per partition",
        lambda: shards(Y, 3, 0),
        r"classes_per_partition must be an int >= 1, got 0",
    ),
    ("shards: too many shards", lambda: shards(Y, 4, 4), r"= 16 shards.*only 12 samples"),
    ("shards: 2-D labels", lambda: shards(Y.reshape(-1, 1), 2, 1), r"shape \(12, 1\)"),
    ("by_group: 2-D groups", lambda: by_group(np.zeros((2, 2))), r"groups.*shape \(2, 2\)"),
    ("by_group: NaN group", lambda: by_group([1.0, np.nan]), r"NaN at index 1"),
    ("label_counts: negative", lambda: label_counts([-1, 0], [np.arange(2)]), r"minimum -1"),
    ("label_counts: floats", lambda: label_counts([0.5], [np.arange(1)]), r"dtype float64"),
    ("label_counts: index", lambda: label_counts(Y, [np.array([12])]), r"partition 0.*\[12\]"),
    (
        "label_counts: width",
        lambda: label_counts(Y, [np.arange(12)], 2),
        r"num_classes must be an int >= 3, got 2",
    ),
]


@pytest.mark.parametrize(
    ("call", "message"), [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS]
)
def test_bad_input_raises_value_error_with_value_and_hint(
    call: Callable[[], Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        call()
    assert "\nHint: " in str(caught.value)


@pytest.mark.parametrize(
    "call",
    [lambda: iid(10, 2.5), lambda: iid(10, True), lambda: dirichlet(Y, 3, alpha="1")],  # type: ignore[arg-type]
    ids=["float partitions", "bool partitions", "string alpha"],
)
def test_wrong_type_raises_type_error_with_hint(call: Callable[[], Any]) -> None:
    with pytest.raises(TypeError, match=r"(?s)got .*Hint: "):
        call()
