"""The math of aggregation, as pure functions and one streaming accumulator.

Invariant: ``WeightedMean`` holds one accumulator the size of the model, whatever the number
of updates folded into it, so a hub's memory is O(model), not O(clients x model). (Each thread
that folds also keeps one fixed-size scratch block per dtype, and the process the last mean's
accumulator for the next one to fold into: ``scratch.py``, ``recycle.py``.)
Strategies are thin policy on top of this module.

A mean can also be summed in pieces: ``partial`` exports what a ``WeightedMean`` holds (its
float64 sums and total weight, a ``PartialSum``) and ``merge`` adds one into another, so
that updates folded where they were computed (a Ray worker's, ``simulation/ray_engine.py``)
travel back as one sum. Merging is adding float64 sums, like folding: the mean, rounded back
to a float32 model, does not depend on how the updates were grouped.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from pollinate.checks import is_number
from pollinate.records import Arrays, Metrics
from pollinate.recycle import Recycler
from pollinate.scratch import BLOCK, scratch

# Updates of at least this many elements are folded half on the caller's thread and half on
# a helper thread: numpy releases the GIL, so two cores stream memory at once. Below it the
# hand-over (~0.1 ms) costs more than it saves.
_SPLIT = 1 << 21

_Pair = tuple[np.ndarray, np.ndarray]
_helper: tuple[int, ThreadPoolExecutor] | None = None
_accumulators = Recycler()


@dataclass(frozen=True)
class PartialSum:
    """Part of a weighted mean, summed elsewhere: ``sums`` holds ``sum_k w_k x_k`` per array
    (float64, complex128 for complex arrays), over ``count`` updates of ``total_weight``
    ``sum_k w_k``. No update of it may be empty (``count == 0`` has no ``sums``).

    >>> mean = WeightedMean(Arrays({"w": np.zeros(2)}))
    >>> mean.add(Arrays({"w": np.array([1.0, 2.0])}), 2)
    >>> part = mean.partial()
    >>> part.sums["w"].tolist(), part.total_weight, part.count
    ([2.0, 4.0], 2.0, 1)
    """

    sums: Arrays
    total_weight: float
    count: int
    tallies: Mapping[str, int] = field(default_factory=dict)
    """Counts a sum keeps beside (DP-FedAvg's updates within its bound), merged by adding."""


class WeightedMean:
    """Streaming weighted mean ``sum_k w_k x_k / sum_k w_k`` over Arrays (McMahan et al.
    2017, FedAvg, eq. for w_{t+1} with w_k = n_k).

    Everything accumulates in float64 (complex128 for complex arrays) and is rounded back to
    the array's dtype at the end. Rounding float64 sums to float32 all but removes the order
    the updates came in: a deployment, where replies arrive in any order, gives the same model
    as a simulation or as a run resumed after a crash, and thousands of updates lose no
    precision. Shapes, names and dtypes of the result are those of ``like``.

    >>> mean = WeightedMean(Arrays({"w": np.zeros(2)}))
    >>> mean.add(Arrays({"w": np.array([1.0, 2.0])}), 1)
    >>> mean.add(Arrays({"w": np.array([4.0, 5.0])}), 2)
    >>> mean.result()["w"].tolist()
    [3.0, 4.0]
    """

    def __init__(self, like: Arrays) -> None:
        self._like = like
        # Not zeros: the first update is scaled straight in (np.zeros + add maps the zero page,
        # reads it, then faults on the write); and the last round's, once nobody holds it, so
        # its pages are not faulted in again every round (``recycle.py``)
        self._acc = {name: _accumulator(a) for name, a in like.items()}
        _accumulators.keep(self._acc.values())
        self._size = sum(a.size for a in self._acc.values())
        self.total_weight = 0.0
        self.count = 0

    def add(self, arrays: Arrays, weight: float) -> None:
        """Fold one update in; its names, shapes and dtypes must match ``like``."""
        if weight < 0 or not np.isfinite(weight):
            raise ValueError(f"weight must be finite and >= 0, got {weight!r}")
        pairs = self._pairs(arrays)
        scale = float(weight)
        if self.count == 0:
            # The first update is written into the fresh accumulator, which faults its pages
            # in. On one thread: two threads faulting pages of one process contend (slower).
            _scale_all(pairs, scale)
        elif self._size >= _SPLIT:
            _fold_in_two(pairs, scale)
        else:
            _fold_all(pairs, scale)
        self.total_weight += weight
        self.count += 1

    def partial(self) -> PartialSum:
        """What was folded in so far, as sums (views of the accumulator: export it when
        done adding)."""
        if self.count == 0:
            return PartialSum(Arrays(), 0.0, 0)
        return PartialSum(Arrays(self._acc), self.total_weight, self.count)

    def merge(self, partial: PartialSum) -> None:
        """Add ``partial`` in, as if its updates had been folded in here one by one; its
        sums must have this mean's names and shapes, in float64 (complex128)."""
        if partial.count == 0:
            return
        if partial.total_weight < 0 or not np.isfinite(partial.total_weight):
            raise ValueError(f"total_weight must be finite and >= 0, got {partial.total_weight!r}")
        pairs = self._pairs(partial.sums)
        for acc, sums in pairs:
            if sums.dtype != acc.dtype:
                raise ValueError(
                    f"partial sums are {sums.dtype}, expected {acc.dtype}: a PartialSum holds "
                    "a WeightedMean's own sums (WeightedMean.partial)"
                )
        for acc, sums in pairs:
            if self.count == 0:
                np.copyto(acc, sums)
            else:
                np.add(acc, sums, out=acc)
        self.total_weight += partial.total_weight
        self.count += partial.count

    def result(self) -> Arrays:
        """The mean so far; raises ValueError if nothing (or only zero weight) was added."""
        if self.total_weight <= 0:
            raise ValueError("no update with positive weight was added; the mean is undefined")
        out = {}
        for name, acc in self._acc.items():
            dtype = self._like[name].dtype
            if dtype.kind in "fc":  # divided straight into the model's dtype: no wide copy
                out[name] = np.divide(
                    acc, self.total_weight, out=np.empty(acc.shape, dtype), casting="unsafe"
                )
            else:
                out[name] = np.rint(acc / self.total_weight).astype(dtype)
        return Arrays(out)

    def _pairs(self, arrays: Arrays) -> list[_Pair]:
        """Flat (accumulator, update) views, checked before anything is folded."""
        pairs = []
        for name, acc in self._acc.items():
            update = np.asarray(arrays[name])
            if update.shape != acc.shape:
                raise ValueError(
                    f"update {name!r} has shape {update.shape}, expected {acc.shape}: "
                    "every update must have the shapes of the arrays WeightedMean was made like"
                )
            pairs.append((acc.reshape(-1), update.reshape(-1)))
        return pairs


def _accumulator(like: np.ndarray) -> np.ndarray:
    """An accumulator for an array like ``like``, its contents stale."""
    dtype = _acc_dtype(like.dtype)
    reused = _accumulators.take(like.shape, dtype)
    return np.empty(like.shape, dtype) if reused is None else reused


def _acc_dtype(dtype: np.dtype) -> np.dtype:
    return np.dtype(np.complex128) if dtype.kind == "c" else np.dtype(np.float64)


def _halves(pairs: list[_Pair]) -> tuple[list[_Pair], list[_Pair]]:
    """Split the pairs into two lists of about the same number of elements."""
    half = sum(acc.size for acc, _ in pairs) // 2
    first: list[_Pair] = []
    second: list[_Pair] = []
    seen = 0
    for acc, update in pairs:
        cut = min(max(half - seen, 0), acc.size)
        if cut > 0:
            first.append((acc[:cut], update[:cut]))
        if cut < acc.size:
            second.append((acc[cut:], update[cut:]))
        seen += acc.size
    return first, second


def _helper_pool() -> ThreadPoolExecutor:
    """The process's one helper thread (made anew in a forked child, where it is gone)."""
    global _helper
    if _helper is None or _helper[0] != os.getpid():
        _helper = (os.getpid(), ThreadPoolExecutor(1, thread_name_prefix="pollinate-fold"))
    return _helper[1]


def _fold_in_two(pairs: list[_Pair], weight: float) -> None:
    """Fold half of the elements on the helper thread and half on this one."""
    first, second = _halves(pairs)
    helper = _helper_pool().submit(_fold_all, first, weight)
    try:
        _fold_all(second, weight)
    finally:
        helper.result()  # also when this half failed: the helper must be done with the arrays


def _scale_all(pairs: list[_Pair], weight: float) -> None:
    for acc, update in pairs:
        np.copyto(acc, update, casting="unsafe")
        acc *= weight


def _fold_all(pairs: list[_Pair], weight: float) -> None:
    for acc, update in pairs:
        _fold(acc, update, weight, scratch(acc.dtype))


def _fold(acc: np.ndarray, update: np.ndarray, weight: float, buf: np.ndarray) -> None:
    """``acc += weight * update`` a cache-sized block at a time through ``buf``: the scaled
    temporary never goes to main memory, so each update byte is read once and the
    accumulator read and written once."""
    for start in range(0, acc.size, BLOCK):
        a = acc[start : start + BLOCK]
        t = buf[: a.size]
        # widen, scale, add: three passes over a cache-sized block beat one mixed-dtype
        # multiply, which numpy runs through its slower buffered casting loop
        np.copyto(t, update[start : start + BLOCK], casting="unsafe")
        t *= weight
        a += t


def weighted_average(results: Iterable[tuple[int, Metrics]]) -> Metrics:
    """Average each numeric metric over clients, weighted by their number of examples.

    Metrics that are not numbers, or that some client did not report, are averaged over the
    clients that did report them as numbers.

    >>> weighted_average([(10, {"acc": 0.5}), (30, {"acc": 0.9})])
    {'acc': 0.8}
    """
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    for n, metrics in results:
        for key, value in metrics.items():
            if not is_number(value):
                continue
            sums[key] = sums.get(key, 0.0) + n * float(value)
            weights[key] = weights.get(key, 0.0) + n
    return {k: sums[k] / weights[k] for k in sums if weights[k] > 0}


# --- server optimizers (pure functions over one array) -------------------------------------


def momentum_step(
    x: np.ndarray, mean: np.ndarray, velocity: np.ndarray, lr: float, momentum: float
) -> tuple[np.ndarray, np.ndarray]:
    """FedAvgM (Hsu et al. 2019): ``v = beta v + (x - mean)``; ``x' = x - lr v``.

    With ``lr=1`` and ``momentum=0`` this is FedAvg (``x' = mean``).
    """
    velocity = momentum * velocity + (x - mean)
    return x - lr * velocity, velocity


def adaptive_step(
    x: np.ndarray, m: np.ndarray, v: np.ndarray, eta: float, tau: float
) -> np.ndarray:
    """FedOpt's update (Reddi et al. 2021, Algorithm 2): ``x' = x + eta m / (sqrt(v) + tau)``."""
    return x + eta * m / (np.sqrt(v) + tau)


def first_moment(m: np.ndarray, delta: np.ndarray, beta1: float) -> np.ndarray:
    """``m = beta1 m + (1 - beta1) delta`` where ``delta`` is the mean client change."""
    return beta1 * m + (1.0 - beta1) * delta


def adagrad_moment(v: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """FedAdagrad: ``v = v + delta^2``."""
    return v + delta * delta


def adam_moment(v: np.ndarray, delta: np.ndarray, beta2: float) -> np.ndarray:
    """FedAdam: ``v = beta2 v + (1 - beta2) delta^2``."""
    return beta2 * v + (1.0 - beta2) * delta * delta


def yogi_moment(v: np.ndarray, delta: np.ndarray, beta2: float) -> np.ndarray:
    """FedYogi: ``v = v - (1 - beta2) delta^2 sign(v - delta^2)``."""
    d2 = delta * delta
    return v - (1.0 - beta2) * d2 * np.sign(v - d2)
