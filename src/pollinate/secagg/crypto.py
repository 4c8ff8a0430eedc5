"""The cryptographic primitives of SecAgg+, each from a well-kept library.

- key agreement: X25519, with HKDF-SHA256 to turn the shared secret into a key or a mask seed
  (Bonawitz et al. 2017, §3: ``s_uv = KA.agree(s_u^SK, s_v^PK)``);
- authenticated encryption of the shares relayed by the server: AES-256-GCM, with the round,
  sender and recipient bound in as associated data, so a ciphertext cannot be replayed
  elsewhere;
- signatures on the advertised keys with the node's identity key (EC P-256 as in the node
  certificate, or Ed25519): a server that substitutes keys is caught by the client's peers;
- Shamir secret sharing over GF(2^128) from pycryptodome; a 32-byte secret is shared as two
  16-byte halves with the same x coordinates.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence

from Crypto.Protocol.SecretSharing import Shamir
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from pollinate.secagg.messages import SecAggError, Share

__all__ = [
    "NodeSigningKey",
    "NodeVerifyingKey",
    "agree",
    "combine_secret",
    "open_share",
    "pack_ids",
    "private_bytes",
    "public_bytes",
    "seal_share",
    "sign",
    "split_secret",
    "verify",
]

NodeSigningKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
NodeVerifyingKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey

_HALF = 16


def sign(key: NodeSigningKey, data: bytes) -> bytes:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(data)
    return key.sign(data, ec.ECDSA(hashes.SHA256()))


def verify(key: NodeVerifyingKey, signature: bytes, data: bytes) -> bool:
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, data)
        else:
            key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def agree(private: x25519.X25519PrivateKey, public: bytes, info: bytes) -> bytes:
    """32 bytes both ends derive alike; ``info`` separates the purposes (cipher key, mask seed)."""
    shared = private.exchange(x25519.X25519PublicKey.from_public_bytes(public))
    return HKDF(hashes.SHA256(), length=32, salt=None, info=info).derive(shared)


def seal_share(key: bytes, associated: bytes, plaintext: bytes) -> tuple[bytes, bytes]:
    """(nonce, ciphertext); a random nonce because both directions of a pair share the key."""
    nonce = os.urandom(12)
    return nonce, AESGCM(key).encrypt(nonce, plaintext, associated)


def open_share(key: bytes, associated: bytes, nonce: bytes, ciphertext: bytes) -> bytes | None:
    """The plaintext, or None when the ciphertext was tampered with or is for someone else."""
    try:
        return AESGCM(key).decrypt(nonce, ciphertext, associated)
    except InvalidTag:
        return None


def split_secret(secret: bytes, threshold: int, count: int) -> list[Share]:
    """``count`` shares of a 32-byte secret, any ``threshold`` of which rebuild it."""
    halves = [Shamir.split(threshold, count, secret[i : i + _HALF]) for i in (0, _HALF)]
    return [(x, a + b) for (x, a), (_, b) in zip(*halves, strict=True)]


def combine_secret(shares: Sequence[Share]) -> bytes:
    """The 32-byte secret from at least ``threshold`` shares (no more are used than given)."""
    if len({x for x, _ in shares}) != len(shares):
        raise SecAggError("two revealed shares have the same x coordinate: a client cheated")
    first = Shamir.combine([(x, s[:_HALF]) for x, s in shares])
    second = Shamir.combine([(x, s[_HALF:]) for x, s in shares])
    return first + second


def pack_ids(*ids: int) -> bytes:
    """Client ids as fixed-width bytes, for signatures, associated data and HKDF labels."""
    return struct.pack(f">{len(ids)}Q", *ids)


def public_bytes(key: x25519.X25519PrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    """The 32 raw bytes of the key's public half, as adverts and credentials carry them."""
    raw = serialization.Encoding.Raw
    return key.public_key().public_bytes(raw, serialization.PublicFormat.Raw)


def private_bytes(key: x25519.X25519PrivateKey) -> bytes:
    """The 32 raw bytes of a private key, the secret that Shamir shares split."""
    raw, plain = serialization.Encoding.Raw, serialization.NoEncryption()
    return key.private_bytes(raw, serialization.PrivateFormat.Raw, plain)
