"""Gaussian noise for differential privacy, drawn from a cryptographic generator.

DP's guarantee assumes noise nobody can predict. numpy's generators (PCG64, Mersenne Twister)
are fast but not cryptographic: their state can be recovered from their output. Here the
uniform bits come from AES-256-CTR keyed by 32 bytes of ``os.urandom`` (the same generator
that expands SecAgg+ masks), turned into normals by the Box-Muller transform in float64.

For experiments, a ``noise_seed`` makes the key a hash of the seed and the round: the noise
then repeats, and protects nothing.
"""

from __future__ import annotations

import hashlib
import math
import os

import numpy as np
import numpy.typing as npt

from pollinate.secagg.field import SEED_BYTES, expand_mask

_MANTISSA = 53  # bits of a float64 mantissa


class GaussianNoise:
    """Normal samples from one AES-CTR key: a round's noise. Each call draws fresh samples."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = os.urandom(SEED_BYTES) if key is None else key
        self._calls = 0

    @classmethod
    def seeded(cls, seed: int, round: int) -> GaussianNoise:
        """Repeatable noise, for experiments only."""
        return cls(hashlib.sha256(f"pollinate-dp-noise/{seed}/{round}".encode()).digest())

    def normal(self, std: float, shape: tuple[int, ...] = ()) -> npt.NDArray[np.float64]:
        """Samples of N(0, std^2) in ``shape`` (a 0-d array for ``()``)."""
        size = math.prod(shape)
        pairs = (size + 1) // 2
        # one key per call: the stream of one call never overlaps another's
        key = hashlib.sha256(self._key + self._calls.to_bytes(8, "big")).digest()
        self._calls += 1
        bits = expand_mask(key, 2 * pairs, 64) >> np.uint64(64 - _MANTISSA)
        # uniforms in (0, 1]: log never sees 0
        uniform = (bits.astype(np.float64) + 1.0) / float(1 << _MANTISSA)
        radius = np.sqrt(-2.0 * np.log(uniform[:pairs]))
        angle = 2.0 * np.pi * uniform[pairs:]
        samples = np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:size]
        return (std * samples).reshape(shape)
