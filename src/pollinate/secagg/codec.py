"""SecAgg+ over pollinate Messages: what each of the four stages carries, as Arrays.

A secure round is four tasks per client, each a ``Message`` of kind ``"secagg"`` whose config
names the stage (``secagg.stage``) and carries the protocol parameters. Protocol items travel
as uint8 arrays named ``secagg/...``, so they stream like any array and never swell a header:

===========  ===========================================  ===================================
stage        instruction arrays                           reply arrays
===========  ===========================================  ===================================
advertise    ``secagg/participants``                      ``secagg/advert``
share        ``secagg/advert/<v>`` per neighbour           ``secagg/share/<recipient>``
mask         the global model + ``secagg/share/<sender>``  ``secagg/masked``
unmask       ``secagg/survivors``, ``secagg/dropped``      ``secagg/seed/<v>``, ``secagg/key/<v>``
===========  ===========================================  ===================================

Decoding checks every length and raises ``SecAggError``: these bytes come from the other side.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from pollinate.records import Arrays, Config
from pollinate.secagg.config import SecAggConfig
from pollinate.secagg.crypto import pack_ids
from pollinate.secagg.field import SEED_BYTES
from pollinate.secagg.messages import EncryptedShare, KeyAdvert, SecAggError, Share

PREFIX = "secagg/"
STAGE_KEY = "secagg.stage"
STAGES = ("advertise", "share", "mask", "unmask")
_KEY_BYTES = 32
_NONCE_BYTES = 12

Bytes = npt.NDArray[np.uint8]


def round_seed(run_id: str, rnd: int, participants: Sequence[int]) -> bytes:
    """The public seed of a round's neighbour graph, derived by the hub and by every client
    from the run, the round and who takes part, so the hub cannot pick a graph it likes."""
    data = b"pollinate-secagg-v1/round" + run_id.encode() + pack_ids(rnd, *sorted(participants))
    return hashlib.sha256(data).digest()


def config_items(config: SecAggConfig) -> Config:
    """The parameters every client of the round must agree on, as instruction config."""
    return {
        "secagg.neighbours": config.neighbours or 0,
        "secagg.threshold-fraction": config.threshold_fraction,
        "secagg.max-dropout-fraction": config.max_dropout_fraction,
        "secagg.clipping-range": config.clipping_range,
        "secagg.modulus-bits": config.modulus_bits,
        "secagg.max-weight": config.max_weight or 0.0,
    }


def config_from(items: Config) -> SecAggConfig:
    """The ``SecAggConfig`` an instruction carries (a ValueError if it is unsafe)."""
    try:
        return SecAggConfig(
            neighbours=int(items["secagg.neighbours"]) or None,
            threshold_fraction=float(items["secagg.threshold-fraction"]),
            max_dropout_fraction=float(items["secagg.max-dropout-fraction"]),
            clipping_range=float(items["secagg.clipping-range"]),
            modulus_bits=int(items["secagg.modulus-bits"]),
            max_weight=float(items["secagg.max-weight"]) or None,
        )
    except KeyError as missing:
        raise SecAggError(
            f"the instruction lacks the secure-aggregation setting {missing}"
        ) from None


def split(arrays: Arrays) -> tuple[Arrays, dict[str, np.ndarray]]:
    """(model arrays, protocol arrays without the prefix)."""
    model = {n: a for n, a in arrays.items() if not n.startswith(PREFIX)}
    protocol = {n[len(PREFIX) :]: a for n, a in arrays.items() if n.startswith(PREFIX)}
    return Arrays(model), protocol


def ids(values: Sequence[int] | frozenset[int]) -> npt.NDArray[np.int64]:
    return np.array(sorted(values), dtype=np.int64)


def id_set(array: np.ndarray | None, what: str) -> frozenset[int]:
    if array is None or array.dtype != np.int64 or array.ndim != 1:
        raise SecAggError(f"the instruction's {what} are not a list of node ids")
    return frozenset(int(v) for v in array)


def keyed(protocol: dict[str, np.ndarray], kind: str) -> dict[int, np.ndarray]:
    """``{v: array}`` for the protocol arrays named ``<kind>/<v>``."""
    out = {}
    for name, array in protocol.items():
        head, _, tail = name.partition("/")
        if head == kind:
            if not tail.isdigit():
                raise SecAggError(f"protocol array {PREFIX}{name} does not name a node id")
            out[int(tail)] = array
    return out


# --- key adverts: client id, two X25519 keys, the node signature, the node's credential -----


def encode_advert(advert: KeyAdvert, credential: bytes) -> Bytes:
    head = struct.pack(">QH", advert.client, len(advert.signature))
    data = head + advert.cipher_key + advert.mask_key + advert.signature + credential
    return np.frombuffer(data, np.uint8).copy()


def decode_advert(array: np.ndarray) -> tuple[KeyAdvert, bytes]:
    data = _raw(array, "key advert")
    fixed = struct.calcsize(">QH") + 2 * _KEY_BYTES
    if len(data) < fixed:
        raise SecAggError(f"a key advert of {len(data)} bytes is too short to hold two keys")
    client, signature_length = struct.unpack_from(">QH", data)
    keys = data[10:fixed]
    signature, credential = data[fixed : fixed + signature_length], data[fixed + signature_length :]
    if len(signature) != signature_length:
        raise SecAggError(f"the key advert of client {client} is truncated")
    return KeyAdvert(client, keys[:_KEY_BYTES], keys[_KEY_BYTES:], signature), credential


# --- encrypted shares ---------------------------------------------------------------------


def encode_share(share: EncryptedShare) -> Bytes:
    data = pack_ids(share.sender, share.recipient) + share.nonce + share.ciphertext
    return np.frombuffer(data, np.uint8).copy()


def decode_share(array: np.ndarray) -> EncryptedShare:
    data = _raw(array, "encrypted share")
    if len(data) <= 16 + _NONCE_BYTES:
        raise SecAggError(f"an encrypted share of {len(data)} bytes is too short")
    sender, recipient = struct.unpack_from(">QQ", data)
    return EncryptedShare(sender, recipient, data[16:28], data[28:])


# --- revealed Shamir shares ----------------------------------------------------------------


def encode_reveal(share: Share) -> Bytes:
    return np.frombuffer(struct.pack(">Q", share[0]) + share[1], np.uint8).copy()


def decode_reveal(array: np.ndarray) -> Share:
    data = _raw(array, "revealed share")
    if len(data) != 8 + SEED_BYTES:
        raise SecAggError(f"a revealed share has {len(data)} bytes, expected {8 + SEED_BYTES}")
    return struct.unpack_from(">Q", data)[0], data[8:]


# --- masked vectors: the smallest unsigned dtype that holds the field ------------------------


def encode_masked(vector: npt.NDArray[np.uint64], modulus_bits: int) -> np.ndarray:
    return vector.astype(np.uint32) if modulus_bits <= 32 else vector


def decode_masked(array: np.ndarray, length: int) -> npt.NDArray[np.uint64]:
    if array.dtype not in (np.uint32, np.uint64) or array.shape != (length,):
        raise SecAggError(
            f"a masked vector of {array.dtype}{list(array.shape)}, expected {length} values: "
            "every client must mask the same model"
        )
    return array.astype(np.uint64)


def _raw(array: np.ndarray, what: str) -> bytes:
    if not isinstance(array, np.ndarray) or array.dtype != np.uint8 or array.ndim != 1:
        raise SecAggError(f"a {what} must travel as a 1-d uint8 array")
    return array.tobytes()
