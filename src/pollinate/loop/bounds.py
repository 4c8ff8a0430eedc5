"""Bounded influence: no single node moves a round's aggregate by more than its fair share.

A node's pull on a weighted mean is its weight times its change. Both are bounded relative to
the round's other replies, by robust statistics that a minority cannot move:

- its example count (its weight) by ``examples_factor`` x the round's median claim and by a
  per-run cap (``bound_examples``);
- its change ``update - global`` by ``norm_factor`` x the round's median change norm
  (``norm_bound``, applied with ``scale_change``);
- its distance to the round's coordinate-wise median update by ``radius`` (centred clipping:
  Karimireddy, He and Jaggi 2021, "Learning from History for Byzantine Robust Optimization",
  ICML, eq. 2: ``v_i <- m + (v_i - m) min(1, tau / ||v_i - m||)``, here with ``m`` the
  coordinate-wise median), in ``pull_toward``.

A bound clips, it does not exclude: an honest outlier (a client with skewed data, a large
site) still contributes, pulled onto the boundary, so its data is learned and it is less of an
outlier next round; a boosted or noisy update contributes no more than an honest one at the
boundary. "Median" is the lower median (the smaller middle value for an even count): with two
replies it is the smaller one, so a single node of two cannot raise the bound it is held to.

Pure functions over arrays; ``screen.py`` applies them to a round's replies.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from pollinate.records import Arrays


def lower_median(values: Sequence[float]) -> float:
    """The lower median: the middle value, the smaller of the two middle ones for an even
    count; a majority of the values cannot be moved past it by the others.

    >>> lower_median([3, 1, 1e18, 2])
    2
    """
    if not values:
        raise ValueError("lower_median of no values")
    return sorted(values)[(len(values) - 1) // 2]


def bound_examples(claims: Sequence[int], factor: float | None, cap: int | None) -> list[int]:
    """Each claimed example count, at most ``factor`` x the claims' lower median and at most
    ``cap`` (None: that bound is off).

    >>> bound_examples([10, 20, 2**62], factor=5.0, cap=None)
    [10, 20, 100]
    >>> bound_examples([10, 20, 30], factor=None, cap=15)
    [10, 15, 15]
    """
    limit = math.inf if cap is None else cap
    if factor is not None and claims:
        limit = min(limit, math.floor(factor * lower_median(claims)))
    return [claim if claim <= limit else max(1, int(limit)) for claim in claims]


def norm_bound(norms: Sequence[float], multiple: float) -> float:
    """The largest change norm a round's update may keep: ``multiple`` x the lower median of
    the non-zero ``norms`` (an unchanged model says nothing of the round's scale, and must
    not shrink the others' bound); infinite with fewer than two of them.

    >>> norm_bound([1.0, 2.0, 30.0], multiple=3.0)
    6.0
    >>> norm_bound([0.0, 0.0, 5.0], multiple=3.0)
    inf
    """
    moved = [norm for norm in norms if norm > 0.0]
    if len(moved) < 2:
        return math.inf
    return multiple * lower_median(moved)


def scale_change(arrays: Arrays, current: Arrays, scale: float) -> Arrays:
    """``current + scale (arrays - current)`` for the float arrays (others as sent).

    >>> scale_change(Arrays({"w": np.array([3.0])}), Arrays({"w": np.array([1.0])}), 0.5)["w"]
    array([2.])
    """
    return Arrays(
        {
            name: _toward(array, current[name], scale) if array.dtype.kind == "f" else array
            for name, array in arrays.items()
        }
    )


def pull_toward(arrays: Arrays, center: Arrays, distance: float, radius: float) -> Arrays:
    """``arrays`` moved toward ``center`` onto the sphere of ``radius`` around it, given
    ``distance``, their L2 distance to it over the float arrays (centred clipping).

    >>> far, center = Arrays({"w": np.array([5.0, 0.0])}), Arrays({"w": np.zeros(2)})
    >>> pull_toward(far, center, distance=5.0, radius=2.0)["w"].tolist()
    [2.0, 0.0]
    """
    if distance <= radius:
        return arrays
    return scale_change(arrays, center, radius / distance)


def _toward(
    array: np.ndarray, reference: np.ndarray, scale: float, block: int = 1 << 20
) -> np.ndarray:
    """``reference + scale (array - reference)`` in float64, stored in ``array``'s dtype, a
    block of coordinates at a time: one new array, no model-sized temporaries."""
    out = np.empty_like(array)
    flat_out, sent, base = out.reshape(-1), array.reshape(-1), reference.reshape(-1)
    for i in range(0, sent.size, block):
        ref = base[i : i + block].astype(np.float64)
        flat_out[i : i + block] = ref + scale * (sent[i : i + block] - ref)
    return out
