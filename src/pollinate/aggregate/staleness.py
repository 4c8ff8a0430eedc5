"""Staleness-weighted buffered steps: FedBuff's server update, streamed.

FedBuff (Nguyen et al. 2022, "Federated Learning with Buffered Asynchronous Aggregation",
AISTATS, Algorithm 1): clients train from whichever model version they were sent; the server
folds each arriving update ``Delta_i = w_i - w_{t_i}`` (the client's model minus the version
``t_i`` it trained from) into a buffer, scaled by a staleness weight ``s(tau_i)`` where
``tau_i = t - t_i`` counts the steps the server took meanwhile, and after K updates steps

    w_{t+1} = w_t + eta_g * (1 / K) * sum_i s(tau_i) Delta_i,    s(tau) = 1 / sqrt(1 + tau).

Here each update is also weighted by its number of examples, as FedAvg weighs them:

    w_{t+1} = w_t + eta_g * sum_i n_i s(tau_i) Delta_i / sum_i n_i

which is the paper's step when the ``n_i`` are equal, and FedAvg with a server learning rate
when no update is stale (with ``eta_g = 1``, exactly FedAvg: ``sum_i n_i w_i / sum_i n_i``).

Invariant: ``BufferedStep`` holds one float64 accumulator the size of the model, whatever K;
its temporaries are cache-sized blocks, so a step's memory is O(model).
"""

from __future__ import annotations

import numpy as np

from pollinate.checks import integer, number, positive
from pollinate.records import Arrays

_BLOCK = 1 << 19
"""Elements per block of a fold: a 4 MB float64 temporary that stays in cache."""


def staleness_weight(staleness: int, exponent: float = 0.5) -> float:
    """``s(tau) = (1 + tau) ** -exponent``: FedBuff's ``1 / sqrt(1 + tau)`` by default (the
    polynomial staleness function of Xie et al. 2019, FedAsync, with ``a = 1/2``).

    >>> staleness_weight(0), staleness_weight(3)
    (1.0, 0.5)
    """
    steps = integer(
        "staleness",
        staleness,
        minimum=0,
        hint="staleness_weight(0) for an update of the current model version; an update "
        "cannot come from a newer one.",
    )
    return float((1.0 + steps) ** -exponent)


class BufferedStep:
    """Folds updates in as they arrive; ``finish()`` is the next global model.

    ``add(update, base, n, s)`` folds ``n * s * (update - base)``; ``finish()`` returns
    ``current + eta * sum / sum(n)`` in the model's dtypes (integer arrays rounded). The
    delta is taken against ``base``, the arrays the update's client trained from, so a stale
    update moves the model by what its client learnt, not back to where the model was.

    >>> step = BufferedStep(Arrays({"w": np.zeros(2)}), server_learning_rate=1.0)
    >>> step.add(Arrays({"w": np.array([2.0, 4.0])}), Arrays({"w": np.zeros(2)}), 1, 1.0)
    >>> step.add(Arrays({"w": np.array([5.0, 5.0])}), Arrays({"w": np.ones(2)}), 1, 0.5)
    >>> step.finish()["w"].tolist()
    [2.0, 3.0]
    """

    def __init__(self, current: Arrays, server_learning_rate: float = 1.0) -> None:
        self._lr = positive(
            "server_learning_rate",
            server_learning_rate,
            hint="BufferedStep(current, server_learning_rate=1.0)",
        )
        self._current = current
        self._acc = {
            name: np.zeros(a.shape, np.complex128 if a.dtype.kind == "c" else np.float64)
            for name, a in current.items()
        }
        self.examples = 0.0
        self.count = 0

    def add(self, update: Arrays, base: Arrays, num_examples: float, weight: float) -> None:
        """Fold ``num_examples * weight * (update - base)``; shapes must match ``current``."""
        hint = "step.add(update, base, num_examples=32, weight=staleness_weight(1))"
        scale = positive("num_examples", num_examples, hint=hint)
        scale *= number("weight", weight, minimum=0, hint=hint)
        for name, acc in self._acc.items():
            new, old = np.asarray(update[name]), np.asarray(base[name])
            if new.shape != acc.shape or old.shape != acc.shape:
                raise ValueError(
                    f"{name!r}: update {new.shape} and base {old.shape} must both have the "
                    f"model's shape {acc.shape}"
                )
            _fold(acc.reshape(-1), new.reshape(-1), old.reshape(-1), scale)
        self.examples += float(num_examples)
        self.count += 1

    def finish(self) -> Arrays:
        """``current + eta * sum / sum(n)``; ValueError if nothing was added."""
        if self.count == 0:
            raise ValueError("no update was added; the step is undefined")
        out = {}
        for name, current in self._current.items():
            moved = current + self._acc[name] * (self._lr / self.examples)
            if current.dtype.kind in "fc":
                out[name] = moved.astype(current.dtype)
            else:
                out[name] = np.rint(moved).astype(current.dtype)
        return Arrays(out)


def _fold(acc: np.ndarray, new: np.ndarray, old: np.ndarray, scale: float) -> None:
    for start in range(0, acc.size, _BLOCK):
        block = slice(start, start + _BLOCK)
        delta = np.subtract(new[block], old[block], dtype=acc.dtype)
        delta *= scale
        acc[block] += delta
