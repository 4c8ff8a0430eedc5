"""Fair aggregation: q-FedAvg's server step, folded in one client at a time.

Invariant: like ``WeightedMean``, ``QFedAvgStep`` holds one float64 accumulator the size of
the model and one number, whatever the number of clients folded in, so the hub's memory is
O(model). It keeps a reference to the current global arrays, which it never writes.
"""

from __future__ import annotations

import math

import numpy as np

from pollinate.checks import number
from pollinate.records import Arrays
from pollinate.scratch import BLOCK

# F_k^(q-1) is infinite at F_k = 0 for q < 1: one client that already fits its data
# perfectly would make sum h_k infinite and freeze the whole step. A floor this far below any
# real loss changes nothing else.
_MIN_LOSS = 1e-10


class QFedAvgStep:
    """q-FedAvg's step (Li et al. 2020, "Fair Resource Allocation in Federated Learning",
    ICLR, Algorithm 2), with ``w`` the current global model, ``w_k`` client k's model after
    local training and ``F_k`` its loss on ``w`` before training::

        Delta_k = F_k^q L (w - w_k)
        h_k     = q F_k^(q-1) ||L (w - w_k)||^2 + L F_k^q
        w'      = w - sum_k Delta_k / sum_k h_k

    ``L`` (``lipschitz``) is the Lipschitz constant of the clients' loss gradients; the paper
    takes ``1 / lr``, the clients' learning rate. A larger ``q`` gives clients with a higher
    loss more say. With ``q = 0``, ``Delta_k = L (w - w_k)`` and ``h_k = L``, so ``w'`` is
    ``(1 / n) sum_k w_k`` whatever ``L``: FedAvg's step with equal weights (the paper samples
    clients with probability proportional to their examples, which makes it FedAvg's).

    Only the sums are kept, in float64; the result has the names, shapes and dtypes of ``w``.

    >>> step = QFedAvgStep(Arrays({"w": np.array([0.0])}), q=1.0, lipschitz=1.0)
    >>> step.add(Arrays({"w": np.array([-1.0])}), loss=2.0)  # Delta = 2, h = 1 + 2
    >>> step.add(Arrays({"w": np.array([-2.0])}), loss=1.0)  # Delta = 2, h = 4 + 1
    >>> step.result()["w"].tolist()  # 0 - (2 + 2) / (3 + 5)
    [-0.5]
    """

    def __init__(self, current: Arrays, q: float, lipschitz: float) -> None:
        if not (math.isfinite(q) and q >= 0 and math.isfinite(lipschitz) and lipschitz > 0):
            raise ValueError(
                f"need a finite q >= 0 and lipschitz > 0, got q={q!r}, lipschitz={lipschitz!r}"
                "\nHint: QFedAvgStep(current, q=1.0, lipschitz=1 / client_learning_rate)"
            )
        self._current = current
        self._q, self._lipschitz = float(q), float(lipschitz)
        # sum_k F_k^q (w - w_k): L is factored out of every Delta_k and put back in result()
        self._acc = {n: np.zeros(a.shape, _wide(a.dtype)) for n, a in current.items()}
        self._h = 0.0
        self.count = 0

    def add(self, arrays: Arrays, loss: float) -> None:
        """Fold in client k's model ``arrays`` and its loss ``F_k`` on ``w`` before training."""
        hint = "aggregator.add(arrays, loss=0.7), the client's loss before it trained"
        number("loss", loss, minimum=0, finite=False, hint=hint)
        self._check(arrays)  # before anything is folded: a bad update changes nothing
        f, q, lip = max(float(loss), _MIN_LOSS), self._q, self._lipschitz
        try:
            fq, fq1 = f**q, f ** (q - 1)
        except OverflowError:
            fq = fq1 = math.inf
        if not (math.isfinite(fq) and math.isfinite(fq1)):
            raise ValueError(
                f"loss {loss!r} to the power q={q} overflows float64\nHint: use a smaller q, "
                "or a loss on a smaller scale (a mean, not a sum, over examples)"
            )
        squared = sum(self._fold(name, arrays[name], fq) for name in self._acc)
        self._h += q * fq1 * lip * lip * squared + lip * fq
        self.count += 1

    def result(self) -> Arrays:
        """``w'``; raises ValueError if no update was added."""
        if self.count == 0:
            raise ValueError("no update was added; the q-FedAvg step is undefined")
        scale = self._lipschitz / self._h
        out = {}
        for name, w in self._current.items():
            acc, flat = self._acc[name].reshape(-1), np.asarray(w).reshape(-1)
            new = np.empty(flat.size, w.dtype)
            for start in range(0, flat.size, BLOCK):
                part = flat[start : start + BLOCK] - scale * acc[start : start + BLOCK]
                new[start : start + BLOCK] = np.rint(part) if w.dtype.kind in "biu" else part
            out[name] = new.reshape(w.shape)
        return Arrays(out)

    def _fold(self, name: str, update: np.ndarray, fq: float) -> float:
        """Add ``fq (w - w_k)`` to the accumulator; return ``||w - w_k||^2`` for this array."""
        acc = self._acc[name].reshape(-1)
        w, wk = np.asarray(self._current[name]).reshape(-1), np.asarray(update).reshape(-1)
        squared = 0.0
        for start in range(0, acc.size, BLOCK):
            diff = w[start : start + BLOCK].astype(acc.dtype)
            diff -= wk[start : start + BLOCK]
            squared += float(np.vdot(diff, diff).real)
            diff *= fq
            acc[start : start + BLOCK] += diff
        return squared

    def _check(self, arrays: Arrays) -> None:
        for name, acc in self._acc.items():
            if name not in arrays or np.shape(arrays[name]) != acc.shape:
                got = np.shape(arrays[name]) if name in arrays else "nothing"
                raise ValueError(
                    f"update {name!r} has shape {got}, expected {acc.shape}: every update "
                    "must have the shapes of the current global arrays"
                )


def _wide(dtype: np.dtype) -> np.dtype:
    return np.dtype(np.complex128) if dtype.kind == "c" else np.dtype(np.float64)
