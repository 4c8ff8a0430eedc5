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


def _holders(kept: list[np.ndarray], index: int) -> int:
    """The reference count of ``kept[index]`` as seen from here: the list's reference, this
    frame's and getrefcount's own, in whatever way this Python counts them."""
    return sys.getrefcount(kept[index])


# measured, not assumed: an interpreter may borrow references it used to count (3.14 does)
_ONLY_OURS = _holders([np.empty(0)], 0)


class Recycler:
    """Hands out the kept arrays nobody else holds (their contents stale): a node's
    ``FleetClient`` decodes its tasks through one (``Decoder(recycler=...)``), and
    ``WeightedMean`` takes its accumulator from one. Only counted references protect an
    array: a weak reference to it, or a raw pointer into its memory, sees it change.

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
        self._kept: dict[tuple[tuple[int, ...], np.dtype], list[np.ndarray]] = {}
        self._lock = threading.Lock()  # two takers at once never get the same array

    def take(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray | None:
        """A kept array of ``shape`` and ``dtype`` that nobody else refers to (its contents
        are stale), or None."""
        with self._lock:
            alike = self._kept.get((shape, dtype), [])
            for index in range(len(alike)):
                # made read-only since it was kept: its taker could not fill it
                if alike[index].flags.writeable and _holders(alike, index) == _ONLY_OURS:
                    return alike.pop(index)
            return None

    def keep(self, arrays: Iterable[np.ndarray]) -> None:
        """Keep ``arrays`` (those that own their memory and may be written) for the next
        ``take``, instead of those kept so far."""
        kept: dict[tuple[tuple[int, ...], np.dtype], list[np.ndarray]] = {}
        for array in arrays:
            if array.flags.owndata and array.flags.writeable:
                kept.setdefault((array.shape, array.dtype), []).append(array)
        with self._lock:
            self._kept = kept
