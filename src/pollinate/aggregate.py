"""The math of aggregation, as pure functions and one streaming accumulator.

Invariant: ``WeightedMean`` holds one accumulator the size of the model, whatever the number
of updates folded into it, so a hub's memory is O(model), not O(clients x model).
Strategies are thin policy on top of this module.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from pollinate.records import Arrays, Metrics

# Fold in blocks that stay in cache: the scaled temporary never goes to main memory, so each
# update byte is read once and the accumulator is read and written once per update.
_BLOCK = 1 << 18


class WeightedMean:
    """Streaming weighted mean ``sum_k w_k x_k / sum_k w_k`` over Arrays (McMahan et al.
    2017, FedAvg, eq. for w_{t+1} with w_k = n_k).

    Float arrays accumulate in their own dtype (float64 for integer arrays, rounded back at
    the end). Shapes, names and dtypes of the result are those of ``like``.

    >>> mean = WeightedMean(Arrays({"w": np.zeros(2)}))
    >>> mean.add(Arrays({"w": np.array([1.0, 2.0])}), 1)
    >>> mean.add(Arrays({"w": np.array([4.0, 5.0])}), 2)
    >>> mean.result()["w"].tolist()
    [3.0, 4.0]
    """

    def __init__(self, like: Arrays) -> None:
        self._like = like
        self._acc = {name: np.zeros(a.shape, _acc_dtype(a.dtype)) for name, a in like.items()}
        self._tmp = {dt: np.empty(_BLOCK, dt) for dt in {a.dtype for a in self._acc.values()}}
        self.total_weight = 0.0
        self.count = 0

    def add(self, arrays: Arrays, weight: float) -> None:
        """Fold one update in; its names, shapes and dtypes must match ``like``."""
        if weight < 0 or not np.isfinite(weight):
            raise ValueError(f"weight must be finite and >= 0, got {weight!r}")
        for name, acc in self._acc.items():
            _fold(acc.reshape(-1), np.asarray(arrays[name]).reshape(-1), weight, self._tmp)
        self.total_weight += weight
        self.count += 1

    def result(self) -> Arrays:
        """The mean so far; raises ValueError if nothing (or only zero weight) was added."""
        if self.total_weight <= 0:
            raise ValueError("no update with positive weight was added; the mean is undefined")
        out = {}
        for name, acc in self._acc.items():
            dtype = self._like[name].dtype
            mean = acc / self.total_weight
            out[name] = mean.astype(dtype) if dtype.kind == "f" else np.rint(mean).astype(dtype)
        return Arrays(out)


def _acc_dtype(dtype: np.dtype) -> np.dtype:
    return dtype if dtype.kind in "fc" else np.dtype(np.float64)


def _fold(
    acc: np.ndarray, update: np.ndarray, weight: float, tmp: dict[np.dtype, np.ndarray]
) -> None:
    buf = tmp[acc.dtype]
    for start in range(0, acc.size, _BLOCK):
        a = acc[start : start + _BLOCK]
        t = buf[: a.size]
        np.multiply(update[start : start + _BLOCK], weight, out=t, casting="unsafe")
        np.add(a, t, out=a)


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
            if isinstance(value, bool) or not isinstance(value, int | float):
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
