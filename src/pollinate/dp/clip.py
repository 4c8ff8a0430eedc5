"""Clipping an update to an L2 norm bound: the step that bounds one client's influence.

The update is the change a client made, ``after - before``, over all arrays as one vector;
clipping scales it by ``min(1, C / ||update||)`` (McMahan et al. 2018, "Learning
Differentially Private Recurrent Language Models", Alg. 1 ``ClipFn``), so no client moves
the sum of updates by more than ``C``. Clients call ``clip_update`` for client-side DP; the
hub calls the same math for hub-side DP.
"""

from __future__ import annotations

import math

import numpy as np

from pollinate.checks import positive
from pollinate.records import Arrays, Metrics, same_arrays

# the metric a client-side clipping client reports: 1 when its update was within the bound
# (before clipping), else 0; adaptive clipping (Andrew et al. 2021) needs exactly this bit
NORM_BELOW_KEY = "dp_norm_below"
# the key of the fit config that carries the clipping norm to clients (client-side DP)
CLIPPING_NORM_KEY = "dp_clipping_norm"


def update_norm(before: Arrays, after: Arrays) -> float:
    """The L2 norm of ``after - before`` over all arrays, computed in float64."""
    total = 0.0
    for name, old in before.items():
        diff = np.asarray(after[name], np.float64) - np.asarray(old, np.float64)
        total += float(np.dot(diff.ravel(), diff.ravel()))
    return math.sqrt(total)


def clip_factor(norm: float, bound: float) -> float:
    """``min(1, bound / norm)``: 1 for an update within the bound, including a zero update."""
    return 1.0 if norm <= bound else bound / norm


def clip_update(before: Arrays, after: Arrays, norm: float) -> tuple[Arrays, Metrics]:
    """``before`` plus the update ``after - before`` clipped to L2 norm ``norm``, and the
    metric (``dp_norm_below``) that adaptive clipping counts.

    A client doing client-side DP applies it to what it trained before replying, with the
    norm the hub sent in the fit config (``config["dp_clipping_norm"]``).

    >>> before = Arrays({"w": np.zeros(2)})
    >>> after = Arrays({"w": np.array([3.0, 4.0])})
    >>> clipped, metrics = clip_update(before, after, 1.0)
    >>> clipped["w"].round(6).tolist(), metrics
    ([0.6, 0.8], {'dp_norm_below': 0})
    """
    _check_bound(norm)
    if before.names != after.names:
        raise ValueError(
            f"clip_update needs the same arrays before and after training, got names "
            f"{before.names!r} and {after.names!r}\nHint: clip_update(arrays_received, "
            "arrays_trained, float(config['dp_clipping_norm']))"
        )
    if same_arrays(before, after):
        raise ValueError(
            "clip_update got the same arrays before and after training: the client trained "
            "the arrays it received in place, so its update would pass unclipped.\nHint: "
            "keep them first, before = arrays.copy(), then clip_update(before, trained, norm)"
        )
    length = update_norm(before, after)
    factor = clip_factor(length, norm)
    clipped = {
        name: _clipped(np.asarray(old), np.asarray(after[name]), factor)
        for name, old in before.items()
    }
    return Arrays(clipped), {NORM_BELOW_KEY: int(length <= norm)}


def _clipped(before: np.ndarray, after: np.ndarray, factor: float) -> np.ndarray:
    if factor == 1.0:
        return after
    wide = before.astype(np.float64) + factor * (after.astype(np.float64) - before)
    return _as_dtype(wide, after.dtype)


def _as_dtype(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Back to the model's dtype; integer arrays (counters) round rather than truncate."""
    return values.astype(dtype) if dtype.kind in "fc" else np.rint(values).astype(dtype)


def _check_bound(norm: float) -> None:
    hint = "pick it near the median norm of unclipped updates (or use adaptive clipping)."
    positive("the clipping norm", norm, hint=hint)
