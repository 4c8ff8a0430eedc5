"""A run's model on disk: ``MODEL_FILE`` in its output directory, as ``Arrays.save`` writes it.

``save_arrays`` and ``load_arrays`` are ``Arrays.save`` and ``Arrays.load`` as functions
(docs/artifacts.md).
"""

from __future__ import annotations

from pathlib import Path

from pollinate.npz import MAX_ARRAYS, MAX_BYTES
from pollinate.records import Arrays

MODEL_FILE = "model.npz"
"""The final global model in a run's output directory (``--out``, ``run_simulation(out=)``)."""


def save_arrays(arrays: Arrays, path: str | Path) -> Path:
    """Write ``arrays`` to ``path`` (``.npz``) whole or not at all; returns the path."""
    if not isinstance(arrays, Arrays):
        raise TypeError(
            f"save_arrays takes Arrays, got {type(arrays).__name__}.\n"
            "Hint: Arrays({'w': w}).save('model.npz')"
        )
    return arrays.save(path)


def load_arrays(
    path: str | Path, *, max_bytes: int = MAX_BYTES, max_arrays: int = MAX_ARRAYS
) -> Arrays:
    """``Arrays.load(path, ...)``."""
    return Arrays.load(path, max_bytes=max_bytes, max_arrays=max_arrays)
