"""Robust aggregation: statistics of a round's updates that a few bad updates cannot move far.

A faulty or adversarial client can send any arrays, and a weighted mean follows a single one
of them anywhere. The statistics here bound such clients' influence, at a price: each needs
all of a round's updates at once, so the caller holds one copy per update (O(clients x
model)), where the mean streams in O(model).

Invariant: the functions themselves never stack whole models. They work over blocks of
coordinates, gathering the n updates' values of one block into an n x block float64 buffer
of about 8 MB, so their own temporary memory does not grow with the model. Blocks are shared
among a few threads, each with its own buffer (numpy copies and sorts without holding the
GIL); results are combined in block order, so they do not depend on the thread count.

Every function takes the updates as a sequence of Arrays with equal names and shapes,
computes in float64 and returns Arrays with the names, shapes and dtypes of the first update
(integer arrays rounded to the nearest integer). Complex arrays are refused: the order
statistics need an order.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from functools import cache, partial
from typing import TypeVar

import numpy as np

from pollinate.aggregate.mean import WeightedMean
from pollinate.checks import integer, number
from pollinate.records import Arrays

# Float64 elements per stacked block: n updates x (_STACK / n) coordinates is 8 MB whatever
# n is, large enough that numpy's per-call overhead vanishes, small enough to stay in cache.
_STACK = 1 << 20

# Rows up to which a sorting network sorts columns faster than numpy's sort (measured on one
# 8 MB block: 10 rows 5.8x faster in float32, 2.6x in float64; 20 rows 2.9x and 1.2x; 40
# rows 1.5x and 0.8x; benchmarks/README.md)
_NETWORK_ROWS = 32

# Threads that share a model's blocks: the statistics are numpy sorts and copies, which run
# without the GIL, so each core takes its share.
_THREADS = min(4, os.cpu_count() or 1)

_Statistic = Callable[[np.ndarray], np.ndarray]
"""Maps an (n, block) float64 stack, which it may overwrite, to the block's (block,) values."""

T = TypeVar("T")


def coordinate_median(updates: Sequence[Arrays]) -> Arrays:
    """Coordinate-wise median (Yin et al. 2018, "Byzantine-Robust Distributed Learning:
    Towards Optimal Statistical Rates", ICML, Definition 1): ``g_j = med{x_j^i : i in [n]}``,
    for an even n the mean of the two middle values.

    However large, fewer than half of the updates cannot move it outside the range of the
    others. Time O(n x model).

    >>> xs = [Arrays({"w": np.array(v)}) for v in ([1.0, 9.0], [2.0, -1.0], [1e9, 0.0])]
    >>> coordinate_median(xs)["w"].tolist()
    [2.0, 0.0]
    """
    return _per_coordinate(updates, _median)


def trimmed_mean(updates: Sequence[Arrays], beta: float) -> Arrays:
    """Coordinate-wise beta-trimmed mean (Yin et al. 2018, Definition 2):
    ``g_j = 1 / ((1 - 2 beta) n) sum_{x in U_j} x``, where ``U_j`` is the updates' j-th
    coordinates without the ``beta`` fraction largest and the ``beta`` fraction smallest.

    ``k = floor(beta n)`` values are dropped at each end and the other ``n - 2k`` averaged;
    ``beta`` is in [0, 1/2), and 0 gives the plain mean. Time O(n log n x model).

    >>> xs = [Arrays({"w": np.array([v])}) for v in (1.0, 2.0, 3.0, 4.0, -1e9)]
    >>> trimmed_mean(xs, beta=0.2)["w"].tolist()  # drops -1e9 and 4: (1 + 2 + 3) / 3
    [2.0]
    """
    _check_beta(beta, "trimmed_mean(updates, beta=0.1)")
    # the decimal the user wrote: 0.3 * 10 must trim 3, whatever binary floats make of it
    k = math.floor(Fraction(str(beta)) * len(updates))
    return _per_coordinate(updates, lambda stack: _trimmed(stack, k))


def krum_scores(updates: Sequence[Arrays], f: int) -> np.ndarray:
    """Krum's scores (Blanchard et al. 2017, "Machine Learning with Adversaries: Byzantine
    Tolerant Gradient Descent", NeurIPS, Section 4): ``s(i) = sum_{i -> j} ||V_i - V_j||^2``,
    where ``i -> j`` runs over the ``n - f - 2`` updates closest to ``V_i``.

    Needs the paper's ``n > 2f + 2``. Returns n float64 scores in the order of ``updates``.
    Time O(n^2 x model) (matrix products over blocks of coordinates); memory O(n^2).

    >>> xs = [Arrays({"w": np.array([v])}) for v in (0.0, 1.0, 3.0, 100.0)]
    >>> krum_scores(xs, f=0).tolist()  # each update's two nearest: 0 -> 1, 3: 1 + 9
    [10.0, 5.0, 13.0, 19210.0]
    """
    _check_krum(len(updates), f)
    return _scores(_squared_distances(updates), f)


def multi_krum(updates: Sequence[Arrays], weights: Sequence[float], f: int, m: int) -> Arrays:
    """Multi-Krum (Blanchard et al. 2017, Section 4): the weighted mean
    ``sum_{i in M} w_i V_i / sum_{i in M} w_i`` of the ``m`` updates ``M`` with the lowest
    Krum scores (``krum_scores``). ``m = 1`` is Krum, the best-scored update itself; ``m = n``
    is the weighted mean of all. Of equal scores, the lower distance to the next-nearest
    update wins (then the next), so the choice does not depend on the order of ``updates``.

    >>> xs = [Arrays({"w": np.array([v])}) for v in (0.0, 1.0, 3.0, 100.0)]
    >>> multi_krum(xs, [3, 1, 1, 1], f=0, m=1)["w"].tolist()
    [1.0]
    >>> multi_krum(xs, [3, 1, 1, 1], f=0, m=2)["w"].tolist()  # (3 * 0 + 1 * 1) / 4
    [0.25]
    """
    _check_count("m", m, 1, "multi_krum(updates, weights, f=1, m=3) averages the best 3")
    if len(weights) != len(updates):
        raise ValueError(f"got {len(updates)} updates but {len(weights)} weights")
    if m > len(updates):
        raise ValueError(f"cannot select m={m} of {len(updates)} updates")
    _check_krum(len(updates), f)
    chosen = _ranking(_squared_distances(updates), f)[:m]
    if m == 1:  # Krum: the update itself, bit for bit (x * w / w can round)
        return updates[chosen[0]].copy()
    mean = WeightedMean(updates[0])
    for i in sorted(chosen):  # in the updates' order, as a plain weighted mean would
        mean.add(updates[i], weights[i])
    return mean.result()


def bulyan(updates: Sequence[Arrays], f: int) -> Arrays:
    """Bulyan over Krum (El Mhamdi et al. 2018, "The Hidden Vulnerability of Distributed
    Learning in Byzantium", ICML, Section 4). Needs ``n >= 4f + 3``.

    1. Select ``theta = n - 2f`` updates by applying Krum again and again to those not yet
       selected (to r left, with their ``max(r - f - 2, 1)`` nearest neighbours; ties as in
       ``multi_krum``).
    2. Per coordinate, ``G_j = (1 / beta) sum_{x in M_j} x``, where ``M_j`` are the
       ``beta = theta - 2f`` selected values closest to their median.

    Time O(n^2 x model) for the distances, computed once, plus O(theta log theta x model).

    >>> xs = [Arrays({"w": np.array([v])}) for v in (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 1e9)]
    >>> bulyan(xs, f=1)["w"].tolist()  # selects 4, 3, 5, 2, 6; the 3 nearest 4: 3, 4, 5
    [4.0]
    """
    _check_count("f", f, 0, "bulyan(updates, f=1) tolerates one bad update")
    n = len(updates)
    if n < 4 * f + 3:
        raise ValueError(
            f"Bulyan needs n >= 4f + 3 = {4 * f + 3} updates to tolerate f={f} bad ones, "
            f"got n={n}.\nHint: lower f to at most {max((n - 3) // 4, 0)} for {n} updates, "
            "or aggregate more updates."
        )
    theta = n - 2 * f
    selected = sorted(_krum_select(_squared_distances(updates), f, theta))
    beta = theta - 2 * f
    return _per_coordinate([updates[i] for i in selected], lambda s: _nearest_median(s, beta))


def median_distances(updates: Sequence[Arrays]) -> np.ndarray:
    """Each update's L2 distance to the coordinate-wise median update (Yin et al. 2018's
    median as a robust centre), over the float arrays, in blocks of coordinates.

    >>> ups = [Arrays({"w": np.array(v)}) for v in ([1., 1.], [1., 2.], [2., 1.], [9., 9.])]
    >>> np.round(median_distances(ups) ** 2, 2).tolist()
    [0.5, 0.5, 0.5, 112.5]
    """

    def squares(name: str, _: int, stack: np.ndarray) -> np.ndarray | None:
        if updates[0][name].dtype.kind != "f":
            return None
        # a float32 model's blocks stay float32 (half the bytes to gather, sort and sum): the
        # distances are scores measured against thresholds, ~1e-6 relative error is nothing
        stack -= _median(_copy(stack)).astype(stack.dtype, copy=False)
        with np.errstate(over="ignore"):  # a float32 sum of squares past 3.4e38: in float64
            sums = np.einsum("ij,ij->i", stack, stack)
        if stack.dtype != np.float64 and not np.isfinite(sums).all():
            wide = stack.astype(np.float64)
            sums = np.einsum("ij,ij->i", wide, wide)
        return sums

    squared = np.zeros(len(updates))
    for block in _each_block(updates, squares, _as_sent_if_float32):
        if block is not None:
            squared += block
    return np.sqrt(squared)


# --- per-block statistics --------------------------------------------------------------------


def _median(stack: np.ndarray) -> np.ndarray:
    # a sort, not np.median's partition: down the rows of a stack numpy sorts about 4x
    # faster than it partitions (benchmarked on 20 x 52K float64)
    _sort_columns(stack)
    return _middle(stack)


def _sort_columns(stack: np.ndarray) -> None:
    """Sort each column of ``stack`` in place. A few rows of finite values go through a
    sorting network, whole rows at a time: numpy sorts down the rows a column at a time,
    2.6-6x slower for 10 rows (``_NETWORK_ROWS``); NaN, which a network would not move to the
    end, leaves the sort to numpy."""
    rows = stack.shape[0]
    if rows > _NETWORK_ROWS or not np.isfinite(stack).all():
        stack.sort(axis=0)
        return
    # min and max of 0.0 and -0.0 may both return the same one: make every zero +0.0 first,
    # so that a column keeps its values
    np.add(stack, 0.0, out=stack)
    low = np.empty_like(stack[0])
    for i, j in _network(rows):
        np.minimum(stack[i], stack[j], out=low)
        np.maximum(stack[i], stack[j], out=stack[j])
        stack[i] = low


@cache
def _network(rows: int) -> list[tuple[int, int]]:
    """Batcher's odd-even merge sort for ``rows`` values: the pairs ``(i, j)``, ``i < j``, to
    put in order, one after another. Built for the next power of two; pairs that reach past
    ``rows`` are left out (those values would be +inf, already in place)."""
    span = 1 << max(rows - 1, 0).bit_length()
    pairs: list[tuple[int, int]] = []

    def merge(first: int, size: int, stride: int) -> None:
        # merge the two sorted halves of the values first, first + stride, ... (size of them)
        if 2 * stride < size:
            merge(first, size, 2 * stride)
            merge(first + stride, size, 2 * stride)
            last = first + size - stride
            pairs.extend((i, i + stride) for i in range(first + stride, last, 2 * stride))
        else:
            pairs.append((first, first + stride))

    def sort(first: int, size: int) -> None:
        if size > 1:
            sort(first, size // 2)
            sort(first + size // 2, size // 2)
            merge(first, size, 1)

    sort(0, span)
    return [(i, j) for i, j in pairs if j < rows]


def _middle(column_sorted: np.ndarray) -> np.ndarray:
    """The median of each column, in float64 whatever the stack's float type."""
    n = column_sorted.shape[0]
    return np.add(column_sorted[(n - 1) // 2], column_sorted[n // 2], dtype=np.float64) / 2


def _trimmed(stack: np.ndarray, k: int) -> np.ndarray:
    # a full sort, not a partition: the kept values are then summed in the same order
    # whatever order the updates came in, so the result is bit for bit order-independent
    _sort_columns(stack)
    return stack[k : stack.shape[0] - k].mean(axis=0)


def _nearest_median(stack: np.ndarray, beta: int) -> np.ndarray:
    """The mean of the ``beta`` values of each column closest to the column's median."""
    _sort_columns(stack)  # ties in distance then go to the smaller value, in any update order
    median = _middle(stack)
    nearest = np.argsort(np.abs(stack - median), axis=0, kind="stable")[:beta]
    return np.take_along_axis(stack, nearest, axis=0).mean(axis=0)


# --- Krum's distances and selection ----------------------------------------------------------


def _squared_distances(updates: Sequence[Arrays]) -> np.ndarray:
    """The n x n matrix of ``||V_i - V_j||^2``, summed over blocks of coordinates."""

    def block_distances(_: str, __: int, stack: np.ndarray) -> np.ndarray:
        # ||x - y||^2 = x.x + y.y - 2 x.y is a matrix product (fast), but it cancels badly
        # when the vectors are long and close. Centring on the median first leaves the honest
        # updates short, whatever an outlier sends, and distances do not change under a shift.
        stack -= _median(_copy(stack))
        gram = stack @ stack.T
        sq = gram.diagonal()
        block = sq[:, None] + sq[None, :] - 2 * gram
        # inf - inf from a huge outlier is nan: it is infinitely far, not unknowable
        return np.where(np.isnan(block), np.inf, block)

    d = np.zeros((len(updates), len(updates)))
    for block in _each_block(updates, block_distances):
        d += block
    np.maximum(d, 0.0, out=d)  # rounding can leave a tiny negative square
    np.fill_diagonal(d, 0.0)
    # exactly symmetric, so that the ties of mutual nearest neighbours are exact ties
    return (d + d.T) / 2


def _check_krum(n: int, f: int) -> None:
    _check_count("f", f, 0, "krum_scores(updates, f=1) tolerates one bad update")
    if n <= 2 * f + 2:
        raise ValueError(
            f"Krum needs more than 2f + 2 = {2 * f + 2} updates to tolerate f={f} bad ones, "
            f"got {n}.\nHint: lower f, or aggregate more updates (Blanchard et al. 2017 "
            "guarantee nothing below n = 2f + 3)."
        )


def _neighbours(d: np.ndarray, f: int) -> tuple[np.ndarray, int]:
    """Each row's distances to the others, nearest first, and how many Krum sums (the
    paper's ``n - f - 2``, at least 1: Bulyan applies Krum to ever fewer updates)."""
    r = d.shape[0]
    others = np.sort(d + np.diag(np.full(r, np.inf)), axis=1)[:, : r - 1]  # self sorts last
    return others, min(max(r - f - 2, 1), r - 1)


def _scores(d: np.ndarray, f: int) -> np.ndarray:
    others, k = _neighbours(d, f)
    return others[:, :k].sum(axis=1)


def _ranking(d: np.ndarray, f: int) -> np.ndarray:
    """Indices from the best Krum score to the worst.

    Equal scores are common, not a fluke: with one neighbour, two updates that are each
    other's nearest tie exactly. They are decided by the distance to the next-nearest update,
    then the next, which depend only on the updates, not on their order."""
    others, k = _neighbours(d, f)
    scores = others[:, :k].sum(axis=1)
    return np.lexsort([*others[:, k:].T[::-1], scores])  # the last key sorts first


def _krum_select(d: np.ndarray, f: int, count: int) -> list[int]:
    """Bulyan's selection: ``count`` indices, each Krum's choice among those left."""
    left = list(range(d.shape[0]))
    chosen = []
    for _ in range(count):
        chosen.append(left.pop(int(_ranking(d[np.ix_(left, left)], f)[0])))
    return chosen


# --- blocks of coordinates -------------------------------------------------------------------


def _per_coordinate(updates: Sequence[Arrays], statistic: _Statistic) -> Arrays:
    """Arrays like the first update, each coordinate ``statistic`` of the updates' values."""
    like = _checked(updates)
    out = {name: np.empty(a.size, a.dtype) for name, a in like.items()}

    def fill(name: str, start: int, stack: np.ndarray) -> None:
        values = statistic(stack)
        if out[name].dtype.kind in "biu":
            values = np.rint(values)
        out[name][start : start + values.size] = values

    for _ in _each_block(updates, fill):
        pass
    return Arrays({name: out[name].reshape(a.shape) for name, a in like.items()})


def _wide(_: np.dtype) -> np.dtype:
    return np.dtype(np.float64)


def _as_sent_if_float32(dtype: np.dtype) -> np.dtype:
    return dtype if dtype == np.float32 else np.dtype(np.float64)


def _each_block(
    updates: Sequence[Arrays],
    work: Callable[[str, int, np.ndarray], T],
    stacked_as: Callable[[np.dtype], np.dtype] = _wide,
) -> Iterator[T]:
    """``work(name, start, stack)`` for every block of coordinates, results in block order,
    each as soon as it and those before it are done: row i of ``stack`` holds update i's
    flat values of ``name`` from ``start`` on, as ``stacked_as(their dtype)`` (float64).
    The blocks are shared among up to ``_THREADS`` threads, each filling one buffer of its
    own per dtype; one array name's flat values are gathered at a time (a copy only for an
    array that is not contiguous)."""
    like = _checked(updates)
    width = max(1, _STACK // len(updates))
    largest = max((a.size for a in like.values()), default=0)
    local = threading.local()

    def one(name: str, flat: list[np.ndarray], start: int) -> T:
        dtype = stacked_as(like[name].dtype)
        buffers: dict[np.dtype, np.ndarray] = local.__dict__.setdefault("buffers", {})
        if dtype not in buffers:
            buffers[dtype] = _padded(len(updates), min(width, largest), dtype)
        stack = buffers[dtype][:, : min(width, like[name].size - start)]
        for row, values in zip(stack, flat, strict=True):
            row[...] = values[start : start + stack.shape[1]]
        return work(name, start, stack)

    threads = min(_THREADS, -(-largest // width))
    with ThreadPoolExecutor(max(threads, 1), thread_name_prefix="robust") as pool:
        for name, a in like.items():
            flat = [np.asarray(u[name]).reshape(-1) for u in updates]
            starts = range(0, a.size, width)
            if threads <= 1:
                yield from (one(name, flat, start) for start in starts)
            else:
                yield from pool.map(partial(one, name, flat), starts)


def _padded(rows: int, columns: int, dtype: np.dtype) -> np.ndarray:
    """An empty ``rows x columns`` stack whose rows are an odd number of 64-byte cache lines
    apart: rows a multiple of 4 KiB apart share cache sets, and numpy's sort down the
    columns of a 64 x 16384 float32 stack ran 8x slower than of 63 or 65 rows
    (benchmarks/README.md, the tenth session)."""
    itemsize = np.dtype(dtype).itemsize
    lines = -(-columns * itemsize // 64)
    lines += 1 - lines % 2
    return np.empty((rows, lines * 64 // itemsize), dtype)[:, :columns]


def _copy(stack: np.ndarray) -> np.ndarray:
    """A copy of ``stack`` in a ``_padded`` one (``ndarray.copy`` packs its rows)."""
    rows, columns = stack.shape
    out = _padded(rows, columns, stack.dtype)
    out[...] = stack
    return out


def _checked(updates: Sequence[Arrays]) -> Arrays:
    """The first update, once every update is known to have its names and shapes."""
    if len(updates) == 0:
        raise ValueError("no updates were given; a statistic of nothing is undefined")
    first = updates[0]
    for name, a in first.items():
        if a.dtype.kind == "c":
            raise TypeError(
                f"array {name!r} is {a.dtype}: robust statistics order values, and complex "
                "numbers have no order.\nHint: aggregate the real and imaginary parts as two "
                "float arrays."
            )
    for k, update in enumerate(updates[1:], start=1):
        if update.names != first.names:
            raise ValueError(
                f"update {k} has arrays {update.names}, update 0 has {first.names}: every "
                "update must be an update of the same model"
            )
        for name, a in first.items():
            if update[name].shape != a.shape:
                raise ValueError(
                    f"update {k} has shape {update[name].shape} for {name!r}, update 0 has "
                    f"{a.shape}: every update must be an update of the same model"
                )
    return first


def _check_count(name: str, value: int, minimum: int, example: str) -> None:
    integer(name, value, minimum=minimum, hint=f"{example}.")


def _check_beta(beta: float, example: str) -> None:
    hint = f"{example} drops the 10% largest and the 10% smallest values of each coordinate."
    number("beta", beta, minimum=0, below=0.5, hint=hint)
