"""Model-sized arrays made again every round, reused once nobody else holds them.

A node decodes a model-sized task every round, and a hub's run folds every round's updates
into a model-sized accumulator. A fresh array of that size costs the kernel's page faults
each time, and on some virtual machines that costs more than the work itself (a 40 MB model:
~88 ms fresh, ~5 ms into memory the process already has, on the 2-core machine of
benchmarks/README.md). A ``Recycler`` keeps the last arrays it was given; the next array of
the same shape and dtype reuses one only if nothing but the recycler refers to it (its
reference count: a message, an Arrays, a view, a tensor made from it or a memoryview of it
all hold one), so no one can see it change.

Cost: between two rounds the process keeps the last arrays (what it held anyway while it used
them).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterable

import numpy as np

# the recycler's list, ``take``'s local name and getrefcount's own argument
_ONLY_OURS = 3


class Recycler:
    """Hands out the kept arrays nobody else holds (their contents stale): a node's
    ``FleetClient`` decodes its tasks through one (``Decoder(recycler=...)``), and
    ``WeightedMean`` takes its accumulator from one.

    >>> recycler = Recycler()
    >>> recycler.keep([np.zeros(3)])
    >>> recycler.take((3,), np.dtype(np.float64)) is not None  # nobody else holds it
    True
    >>> held = np.zeros(3)
    >>> recycler.keep([held])
    >>> recycler.take((3,), np.dtype(np.float64)) is None  # ``held`` still refers to it
    True
    """

    def __init__(self) -> None:
        self._kept: list[np.ndarray] = []
        self._lock = threading.Lock()  # two takers at once never get the same array

    def take(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray | None:
        """A kept array of ``shape`` and ``dtype`` that nobody else refers to (its contents
        are stale), or None."""
        with self._lock:
            for index in range(len(self._kept)):  # not enumerate: its tuple holds a reference
                array = self._kept[index]
                if (
                    array.shape == shape
                    and array.dtype == dtype
                    and sys.getrefcount(array) == _ONLY_OURS
                ):
                    return self._kept.pop(index)
            return None

    def keep(self, arrays: Iterable[np.ndarray]) -> None:
        """Keep ``arrays`` (those that own their memory) for the next ``take``, instead of
        those kept so far."""
        with self._lock:
            self._kept = [a for a in arrays if a.flags.owndata]
