"""Partitioners: split a dataset across federated clients.

Every partitioner returns one int64 index array per partition. The invariants, each named by a
test in ``tests/datasets/test_partition.py``:

- each index array is sorted ascending;
- the arrays are disjoint and together cover ``range(n_samples)``;
- the result depends only on the arguments and ``seed`` (``np.random.default_rng(seed)``),
  never on global random state.

Labels and groups may also be a Hugging Face ``datasets.Dataset`` with ``column=`` naming the
column to read (``dirichlet(ds, 10, alpha=0.5, column="label")``); the result is the same as
for that column as a NumPy array. See :mod:`pollinate.datasets.huggingface`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from pollinate.checks import integer, positive
from pollinate.datasets.huggingface import as_array, class_names, is_dataset

if TYPE_CHECKING:
    from datasets import Dataset

Partitions = list[npt.NDArray[np.int64]]

_MAX_ATTEMPTS = 100


def iid(n_samples: int | Dataset, num_partitions: int, seed: int = 0) -> Partitions:
    """Shuffle ``range(n_samples)`` and split it into partitions whose sizes differ by at most 1.

    ``n_samples`` may be a Hugging Face ``Dataset``: its rows are split.

    Example:
        >>> [len(p) for p in iid(10, num_partitions=3, seed=0)]
        [4, 3, 3]
    """
    if is_dataset(n_samples):
        n_samples = len(n_samples)
    _check_int("n_samples", n_samples, minimum=1)
    _check_partitions(num_partitions, n_samples)
    order = np.random.default_rng(seed).permutation(n_samples)
    return [np.sort(part) for part in np.array_split(order, num_partitions)]


def dirichlet(
    labels: npt.ArrayLike | Dataset,
    num_partitions: int,
    alpha: float,
    seed: int = 0,
    min_size: int = 1,
    *,
    column: str | None = None,
) -> Partitions:
    """Label skew: each class is spread over partitions by proportions drawn from a Dirichlet.

    For every class ``c``: draw ``p_c ~ Dir(alpha * 1_K)`` over the ``K = num_partitions``
    partitions and give partition ``k`` the next ``floor(n_c * (p_c1 + ... + p_ck))`` of the
    class's shuffled indices. Hsu et al. 2019, "Measuring the Effects of Non-Identical Data
    Distribution for Federated Visual Classification", introduced Dirichlet label skew drawing
    each client's class mix ``q ~ Dir(alpha * p)``; the per-class rule used here is the one of
    Yurochkin et al. 2019, "Bayesian Nonparametric Federated Learning of Neural Networks", and
    of NIID-Bench (Li et al. 2022, "Federated Learning on Non-IID Data Silos: An Experimental
    Study"). Small ``alpha`` (0.1) gives very skewed partitions, large ``alpha`` (100) nearly
    IID ones.

    Whole draws are repeated, as in NIID-Bench but at most 100 times, until every partition
    holds at least ``min_size`` samples; ``min_size=0`` accepts the first draw.

    Example:
        >>> labels = np.repeat([0, 1, 2], 20)
        >>> parts = dirichlet(labels, num_partitions=4, alpha=0.5, seed=0)
        >>> sum(len(p) for p in parts), min(len(p) for p in parts) >= 1
        (60, True)
    """
    y = _check_labels(labels, column=column)
    _check_partitions(num_partitions, y.size)
    hint = "use e.g. alpha=0.1 for strong label skew or alpha=100 for nearly IID."
    positive("alpha", alpha, hint=hint)
    _check_int("min_size", min_size, minimum=0)
    if min_size * num_partitions > y.size:
        raise ValueError(
            f"min_size={min_size!r} times num_partitions={num_partitions!r} exceeds the "
            f"{y.size} samples.\nHint: lower min_size or num_partitions."
        )
    rng = np.random.default_rng(seed)
    _, classes = np.unique(y, return_inverse=True)
    members = [np.flatnonzero(classes == c) for c in range(int(classes.max()) + 1)]
    smallest = 0
    for _attempt in range(_MAX_ATTEMPTS):
        owner = np.empty(y.size, dtype=np.int64)
        for idx in members:
            p = rng.dirichlet(np.full(num_partitions, float(alpha)))
            bounds = np.minimum(np.floor(np.cumsum(p) * idx.size), idx.size).astype(np.int64)
            bounds[-1] = idx.size
            sizes = np.diff(bounds, prepend=0)
            owner[rng.permutation(idx)] = np.repeat(np.arange(num_partitions), sizes)
        smallest = int(np.bincount(owner, minlength=num_partitions).min())
        if smallest >= min_size:
            return _split_by_owner(owner, num_partitions)
    raise ValueError(
        f"dirichlet(alpha={alpha!r}, num_partitions={num_partitions!r}, min_size={min_size!r}) "
        f"left some partition below min_size in all {_MAX_ATTEMPTS} draws over {y.size} samples "
        f"(the last draw's smallest partition had {smallest}).\n"
        "Hint: raise alpha, lower num_partitions, or lower min_size (min_size=0 allows empty "
        "partitions)."
    )


def shards(
    labels: npt.ArrayLike | Dataset,
    num_partitions: int,
    classes_per_partition: int,
    seed: int = 0,
    *,
    column: str | None = None,
) -> Partitions:
    """Pathological non-IID: label-sorted shards, ``classes_per_partition`` per partition.

    McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks from Decentralized
    Data", Sec. 3: sort the data by label, cut it into ``S = num_partitions *
    classes_per_partition`` shards of equal size (sizes differ by at most 1), and give each
    partition ``classes_per_partition`` shards chosen at random. Ties within a class are broken
    at random, so each shard is a random subset of its classes.

    Guarantee: a shard is a contiguous run of the label-sorted data, so a partition holds

    - at most ``classes_per_partition`` distinct labels when every class fills whole shards
      (``S`` divides ``n_samples`` and the shard size divides every class count, as for MNIST
      in the paper: 60,000 images, 200 shards of 300);
    - at most ``2 * classes_per_partition`` distinct labels when every class has at least
      ``ceil(n_samples / S)`` samples (a shard then crosses at most one class boundary).

    With smaller classes a shard can span more labels.

    Example:
        >>> labels = np.repeat([0, 1, 2, 3], 5)
        >>> parts = shards(labels, num_partitions=2, classes_per_partition=2, seed=0)
        >>> [sorted(set(labels[p].tolist())) for p in parts]
        [[2, 3], [0, 1]]
    """
    y = _check_labels(labels, column=column)
    _check_int("classes_per_partition", classes_per_partition, minimum=1)
    _check_partitions(num_partitions, y.size)
    num_shards = num_partitions * classes_per_partition
    if num_shards > y.size:
        raise ValueError(
            f"num_partitions={num_partitions!r} * classes_per_partition="
            f"{classes_per_partition!r} = {num_shards} shards, but there are only {y.size} "
            "samples.\nHint: lower num_partitions or classes_per_partition so that "
            "num_partitions * classes_per_partition <= n_samples."
        )
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(y.size)
    by_label = shuffled[np.argsort(y[shuffled], kind="stable")]
    pieces = np.array_split(by_label, num_shards)
    dealt = rng.permutation(num_shards).reshape(num_partitions, classes_per_partition)
    return [np.sort(np.concatenate([pieces[s] for s in row])) for row in dealt]


def by_group(
    groups: npt.ArrayLike | Dataset, *, column: str | None = None
) -> tuple[npt.NDArray[Any], Partitions]:
    """Natural partition by an id column (hospital id, user id): one partition per group.

    Returns ``(values, partitions)``: ``values`` holds the distinct group values in sorted order
    (as ``np.unique`` gives them) and ``partitions[i]`` holds the indices whose group is
    ``values[i]``. No randomness is involved.

    Example:
        >>> values, parts = by_group(np.array(["b", "a", "b", "c"]))
        >>> values.tolist(), [p.tolist() for p in parts]
        (['a', 'b', 'c'], [[1], [0, 2], [3]])
    """
    g = _check_labels(groups, name="groups", column=column)
    if g.dtype.kind in "fc" and bool(np.isnan(g).any()):
        raise ValueError(
            f"groups contains NaN at index {int(np.flatnonzero(np.isnan(g))[0])}: a sample "
            "without a group cannot be placed.\nHint: drop those samples, or give them their "
            "own id, e.g. np.nan_to_num(groups, nan=-1)."
        )
    values, owner = np.unique(g, return_inverse=True)
    return values, _split_by_owner(owner.reshape(-1).astype(np.int64), values.size)


def label_counts(
    labels: npt.ArrayLike | Dataset,
    partitions: Partitions,
    num_classes: int | None = None,
    *,
    column: str | None = None,
) -> npt.NDArray[np.int64]:
    """Count labels per partition: ``counts[k, c]`` = samples of class ``c`` in partition ``k``.

    ``labels`` must be non-negative integer class ids; there are ``num_classes`` columns
    (default ``labels.max() + 1``, taken over all labels so every row has the same width; for a
    ``ClassLabel`` column of a Dataset, its number of classes). ``partition_summary`` counts
    labels of any kind (strings too) and prints them.

    Example:
        >>> label_counts(np.array([0, 1, 1, 2]), [np.array([0, 1]), np.array([2, 3])]).tolist()
        [[1, 1, 0], [0, 1, 1]]
    """
    y = _check_labels(labels, column=column)
    if y.dtype.kind not in "iu" or int(y.min()) < 0:
        smallest = f" with minimum {y.min().item()!r}" if y.dtype.kind in "iufb" else ""
        raise ValueError(
            f"labels must be non-negative integer class ids, got dtype {y.dtype}{smallest}.\n"
            f"Hint: {_encode_hint(labels, column, y)}"
        )
    names = class_names(labels, column)
    default = int(y.max()) + 1 if names is None else len(names)
    width = default if num_classes is None else num_classes
    _check_int("num_classes", width, minimum=int(y.max()) + 1)
    counts = np.zeros((len(partitions), width), dtype=np.int64)
    for k, part in enumerate(partitions):
        idx = np.asarray(part)
        if idx.size and (idx.dtype.kind not in "iu" or idx.min() < 0 or idx.max() >= y.size):
            raise ValueError(
                f"partition {k} holds indices outside 0..{y.size - 1}: {idx!r}.\n"
                "Hint: pass the labels of the same dataset the partitions were made from."
            )
        counts[k] = np.bincount(y[idx], minlength=width)
    return counts


def _split_by_owner(owner: npt.NDArray[np.int64], num_partitions: int) -> Partitions:
    """Group sample indices by owner; a stable sort keeps each group ascending."""
    order = np.argsort(owner, kind="stable").astype(np.int64)
    ends = np.cumsum(np.bincount(owner, minlength=num_partitions))[:-1]
    return list(np.split(order, ends))


def _encode_hint(labels: object, column: str | None, y: npt.NDArray[Any]) -> str:
    if not is_dataset(labels):
        return "map them first: _, labels = np.unique(labels, return_inverse=True)."
    if y.dtype.kind in "iu":  # a ClassLabel column marks unlabelled rows (test splits) with -1
        return f"drop unlabelled rows first: ds.filter(lambda row: row[{column!r}] >= 0)."
    return f"turn the column into class ids first: ds = ds.class_encode_column({column!r})."


def _check_labels(labels: Any, name: str = "labels", column: str | None = None) -> npt.NDArray[Any]:
    y = as_array(labels, column, name)
    if y.ndim != 1 or y.size == 0:
        raise ValueError(
            f"{name} must be a non-empty 1-D array, got shape {y.shape!r}.\n"
            f"Hint: pass one value per sample, e.g. {name}.ravel() for a column vector."
        )
    return y


def _check_int(name: str, value: object, minimum: int) -> None:
    integer(name, value, minimum=minimum, hint=_HINTS[name])


def _check_partitions(num_partitions: int, n_samples: int) -> None:
    _check_int("num_partitions", num_partitions, minimum=1)
    if num_partitions > n_samples:
        raise ValueError(
            f"num_partitions={num_partitions!r} is larger than the {n_samples} samples: some "
            f"partitions would be empty.\nHint: use num_partitions <= {n_samples}."
        )


_HINTS = {
    "n_samples": "pass the dataset length, e.g. n_samples=len(x_train).",
    "num_partitions": "use one partition per simulated client, e.g. num_partitions=10.",
    "min_size": "use min_size=0 to allow empty partitions, or a positive count.",
    "classes_per_partition": "McMahan et al. use classes_per_partition=2.",
    "num_classes": "leave num_classes=None to use labels.max() + 1, or pass a larger value.",
}
