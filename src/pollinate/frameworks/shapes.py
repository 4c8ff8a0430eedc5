"""What the adapters say when arrays do not fit a model: one message for every framework."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def mismatch(
    expected: Mapping[str, tuple[int, ...]],
    arrays: Mapping[str, np.ndarray],
    notes: Mapping[str, str] | None = None,
) -> str:
    """The missing, unexpected and mis-shaped names of ``arrays`` against the model's
    ``expected`` shapes ("" when they fit); ``notes`` adds a word on a mis-shaped name.

    >>> mismatch({"w": (2, 3), "b": (3,)}, {"w": np.zeros((3, 2)), "x": np.zeros(1)})
    "missing 'b'; unexpected 'x'; mis-shaped 'w' [3, 2] (model [2, 3])"
    """
    notes = notes or {}
    missing = [repr(name) for name in expected if name not in arrays]
    unexpected = [repr(name) for name in arrays if name not in expected]
    misshaped = [
        f"{name!r} {list(np.shape(arrays[name]))} (model {list(shape)}{notes.get(name, '')})"
        for name, shape in expected.items()
        if name in arrays and tuple(np.shape(arrays[name])) != tuple(shape)
    ]
    kinds = (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped))
    return "; ".join(f"{what} {_some(items)}" for what, items in kinds if items)


def _some(items: list[str], shown: int = 5) -> str:
    more = f" and {len(items) - shown} more" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more
