"""The messages of a SecAgg+ round, and its error.

The server only ever relays these: public keys with their signatures, ciphertexts it cannot
open, masked vectors, and the shares clients choose to reveal. A round runs in four steps
(Bonawitz et al. 2017, Fig. 4; Bell et al. 2020, Alg. 2)::

    client                          server
    advertise_keys()  -- KeyAdvert -->   relay_adverts()      (to each client, its neighbours')
    share_keys()      -- EncryptedShare ->  relay_shares()    (to each recipient)
    masked_input()    -- MaskedInput -->  receive_masked()
    unmask()          <-- UnmaskRequest --  unmask_request()
                      -- ShareReveal -->  finish()           -> AggregateSum
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from pollinate.errors import PollinateError

__all__ = [
    "AggregateSum",
    "EncryptedShare",
    "KeyAdvert",
    "KeySubstituted",
    "MaskedInput",
    "SecAggError",
    "ShareReveal",
    "UnmaskRequest",
]

Share = tuple[int, bytes]
"""A Shamir share of a 32-byte secret: (x coordinate, 32 bytes)."""


class SecAggError(PollinateError):
    """A secure-aggregation round cannot go on: a bad signature, too many dropouts, misuse.

    The round is aborted; nothing about any client's update has been revealed.
    """


class KeySubstituted(SecAggError):
    """A neighbour's relayed keys are not signed by that neighbour: the hub, or someone
    between, substituted them. The round aborts before any secret is shared."""


@dataclass(frozen=True)
class KeyAdvert:
    """A client's two X25519 public keys, signed with its node key.

    ``cipher_key`` encrypts the shares sent to it; ``mask_key`` agrees pairwise mask seeds.
    """

    client: int
    cipher_key: bytes
    mask_key: bytes
    signature: bytes = field(repr=False)


@dataclass(frozen=True)
class EncryptedShare:
    """Shares of ``sender``'s secrets for ``recipient``, sealed with AES-GCM."""

    sender: int
    recipient: int
    nonce: bytes = field(repr=False)
    ciphertext: bytes = field(repr=False)


@dataclass(frozen=True)
class MaskedInput:
    """``y_u = x_u + PRG(b_u) + sum_v ±PRG(s_uv) mod R``: uniform to anyone without the seeds."""

    client: int
    vector: npt.NDArray[np.uint64] = field(repr=False)


@dataclass(frozen=True)
class UnmaskRequest:
    """Which clients' self masks to remove (``survivors``) and pairwise masks (``dropped``)."""

    survivors: frozenset[int]
    dropped: frozenset[int]


@dataclass(frozen=True)
class ShareReveal:
    """A client's answer: self-mask seed shares of survivors, key shares of dropped clients."""

    client: int
    seed_shares: dict[int, Share] = field(repr=False)
    key_shares: dict[int, Share] = field(repr=False)


@dataclass(frozen=True)
class AggregateSum:
    """The unmasked result: the exact integer sum of the quantized inputs, and as floats."""

    quantized: npt.NDArray[np.uint64] = field(repr=False)
    values: npt.NDArray[np.float64] = field(repr=False)
    count: int
    clients: frozenset[int]
