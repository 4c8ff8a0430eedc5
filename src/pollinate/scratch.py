"""Passes over a model a cache-sized block at a time, through one scratch block per thread.

A pass that makes a model-sized temporary (``(update - base) ** 2``) streams main memory
several times over; one that makes a fresh block per call pays for the kernel handing out
fresh pages, which on some virtual machines costs more than the arithmetic (0.45 GB/s on
the 2-core machine of benchmarks/README.md). So each thread keeps one block per dtype,
faulted in once and reused for as long as the thread lives.
"""

from __future__ import annotations

import threading

import numpy as np

# Blocks of 512K elements (2 MB of float32) measured as fast as any on one thread and on two;
# blocks of 128K or fewer pay for Python's overhead per ufunc call (benchmarks/README.md).
BLOCK = 1 << 19

_local = threading.local()


def scratch(dtype: np.dtype | type) -> np.ndarray:
    """This thread's scratch block of ``dtype``, ``BLOCK`` elements, kept across calls: a
    caller uses it until it returns, and hands none of it out."""
    blocks: dict[np.dtype, np.ndarray] = _local.__dict__.setdefault("blocks", {})
    key = np.dtype(dtype)
    if key not in blocks:
        blocks[key] = np.empty(BLOCK, key)
    return blocks[key]
