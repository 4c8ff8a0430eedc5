"""A client's update as the one flat vector SecAgg+ masks, and the hub's sum back as Arrays.

A client sends ``[w * (new - global) ..., w]`` with ``w = min(examples, max_weight) /
max_weight`` (or 1): changes are small where weights are not, so they fit the clipping range,
and the last value lets the hub divide the summed changes by the summed weights. Every array
travels as float64 changes, integer buffers included; the hub rounds them back to their dtype.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from pollinate.records import Arrays

Vector = npt.NDArray[np.float64]


def client_weight(examples: int, max_weight: float | None) -> float:
    """The weight a client's change gets in the mean: its examples, capped, over the cap."""
    if max_weight is None:
        return 1.0
    return min(float(examples), max_weight) / max_weight


def flatten(new: Arrays, current: Arrays, weight: float) -> Vector:
    """``[weight * (new - current) flattened, weight]``, in ``current``'s array order."""
    size = sum(a.size for a in current.values())
    out = np.empty(size + 1, np.float64)
    at = 0
    for name, base in current.items():
        change = np.asarray(new[name], np.float64).reshape(-1) - base.reshape(-1)
        out[at : at + base.size] = change * weight
        at += base.size
    out[size] = weight
    return out


def vector_length(current: Arrays) -> int:
    return sum(a.size for a in current.values()) + 1


def mean_model(total: Vector, current: Arrays) -> Arrays:
    """``current + sum(changes) / sum(weights)``, cast back to each array's dtype."""
    weight = float(total[-1])
    out = {}
    at = 0
    for name, base in current.items():
        change = total[at : at + base.size].reshape(base.shape) / weight
        value = base.astype(np.float64) + change
        if base.dtype.kind in "iub":
            value = np.rint(value)
        out[name] = value.astype(base.dtype)
        at += base.size
    return Arrays(out)
