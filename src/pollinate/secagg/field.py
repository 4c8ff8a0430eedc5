"""The arithmetic of secure aggregation: quantization, the field, and mask expansion.

Masks only hide an update if they are added in a finite group, so updates are first turned into
integers modulo ``R = 2**modulus_bits`` (Bonawitz et al. 2017, "Practical Secure Aggregation for
Privacy-Preserving Machine Learning", §3; Bell et al. 2020, "Secure Single-Server Aggregation
with (Poly)Logarithmic Overhead", §5). A float ``x`` clipped to ``[-c, c]`` becomes

    q(x) = round((x + c) / (2c) * L)      in {0, ..., L}

with ``L = (R - 1) // n`` levels, so that the sum of ``n`` quantized updates never wraps around
the modulus and the server reads the exact integer sum once the masks cancel.

Masks are expanded from 32-byte seeds with AES-256 in counter mode, a cryptographic generator:
numpy's generators are predictable from their output and would let the server strip the masks.

>>> q = quantize(np.array([-1.0, 0.0, 1.0]), clipping_range=1.0, levels=4)
>>> q.tolist()
[0, 2, 4]
>>> dequantize_sum(q, clipping_range=1.0, levels=4, count=1).tolist()
[-1.0, 0.0, 1.0]
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = [
    "SEED_BYTES",
    "FieldVector",
    "add_mod",
    "dequantize_sum",
    "expand_mask",
    "field_mask",
    "levels_for",
    "quantize",
    "sub_mod",
]

SEED_BYTES = 32
FieldVector = npt.NDArray[np.uint64]


def field_mask(modulus_bits: int) -> np.uint64:
    """``R - 1``: uint64 arithmetic wraps mod 2**64, and ``& (R - 1)`` reduces mod R."""
    return np.uint64((1 << modulus_bits) - 1)


def add_mod(a: FieldVector, b: FieldVector, modulus_bits: int) -> FieldVector:
    """``(a + b) mod 2**modulus_bits``, elementwise."""
    return (a + b) & field_mask(modulus_bits)


def sub_mod(a: FieldVector, b: FieldVector, modulus_bits: int) -> FieldVector:
    """``(a - b) mod 2**modulus_bits``, elementwise (uint64 subtraction wraps, the mask reduces)."""
    return (a - b) & field_mask(modulus_bits)


def levels_for(modulus_bits: int, clients: int) -> int:
    """Quantization levels ``L`` such that ``clients`` values in ``{0..L}`` sum below ``R``."""
    levels = ((1 << modulus_bits) - 1) // max(clients, 1)
    if levels < 2:
        raise ValueError(
            f"a {modulus_bits}-bit field leaves {levels} quantization levels for {clients} "
            "clients, too few to carry an update.\nHint: SecAggConfig(modulus_bits=32)"
        )
    return levels


def quantize(values: npt.ArrayLike, clipping_range: float, levels: int) -> FieldVector:
    """Clip ``values`` to ``[-c, c]`` and round them onto ``{0, ..., levels}``.

    Round-to-nearest: the round trip through :func:`dequantize_sum` is off by at most
    ``c / levels`` per value (half a step of ``2c / levels``).
    """
    x = np.clip(np.asarray(values, dtype=np.float64), -clipping_range, clipping_range)
    scaled = np.rint((x + clipping_range) * (levels / (2 * clipping_range)))
    return scaled.astype(np.uint64)


def dequantize_sum(
    total: FieldVector, clipping_range: float, levels: int, count: int
) -> npt.NDArray[np.float64]:
    """Map the integer sum of ``count`` quantized vectors back to the float sum.

    Each ``q`` stands for ``q * 2c / L - c``, so a sum of ``count`` of them stands for
    ``total * 2c / L - count * c``.
    """
    step = 2 * clipping_range / levels
    return total.astype(np.float64) * step - count * clipping_range


def expand_mask(seed: bytes, length: int, modulus_bits: int) -> FieldVector:
    """``length`` field elements, uniform mod ``2**modulus_bits``, from a 32-byte seed.

    AES-256-CTR keyed by the seed encrypts zeros; the low ``modulus_bits`` bits of each 64-bit
    word are uniform because R divides 2**64. The fixed nonce is safe because every seed is
    used for exactly one mask (seeds come out of HKDF with a per-purpose label).
    """
    if len(seed) != SEED_BYTES:
        raise ValueError(
            f"a mask seed is {SEED_BYTES} bytes, got {len(seed)}: short seeds can be guessed.\n"
            "Hint: expand_mask(os.urandom(32), length, modulus_bits)"
        )
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
    stream = encryptor.update(bytes(8 * length))
    return np.frombuffer(stream, dtype="<u8") & field_mask(modulus_bits)
