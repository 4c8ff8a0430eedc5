"""Where a node's SecAgg signing key and its peers' keys come from, in each engine.

- Deployment: the node's own mTLS key signs, its certificate is its credential, and a peer's
  certificate must be issued by the fleet's CA to the node id it claims (``CN=node-<id>``).
- Simulation: a ``KeyRing`` plays the fleet: it derives an Ed25519 key per client from one
  secret and so knows every public key, as a CA knows the certificates it issued. Processes
  that answer for the same virtual clients (the Ray engine's workers) share the ring, and so
  check each other's clients' signatures.
"""

from __future__ import annotations

import hashlib
import secrets
import threading

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from pollinate.secagg.crypto import NodeVerifyingKey, public_bytes
from pollinate.secagg.messages import SecAggError
from pollinate.secagg.node import NodeIdentity
from pollinate.security import NodeCredentials, verify_peer_certificate


def certificate_identity(credentials: NodeCredentials) -> NodeIdentity:
    """A deployed node's identity: its certificate key signs, the fleet CA vouches for peers."""
    key = serialization.load_pem_private_key(credentials.key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        raise SecAggError(
            f"the node key is {type(key).__name__}; secure aggregation signs with EC or "
            "Ed25519 keys, as `pollinate node` makes them"
        )
    ca = credentials.ca_pem

    def peer_key(node_id: int, credential: bytes) -> NodeVerifyingKey:
        named, public = verify_peer_certificate(credential, ca)
        if named != node_id:
            raise SecAggError(f"the certificate is node {named}'s, not node {node_id}'s")
        if not isinstance(public, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
            raise SecAggError(f"node {node_id}'s certificate holds a {type(public).__name__}")
        return public

    return NodeIdentity(key, credentials.cert_pem, peer_key)


class KeyRing:
    """The simulation's stand-in for a fleet CA: one Ed25519 key per virtual client, derived
    from the ring's 32-byte ``secret`` (random unless given), so a ring pickled to another
    process (a Ray worker) makes the same keys there. The secret is the whole fleet's keys:
    it stays inside the simulation's own processes."""

    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secrets.token_bytes(32) if secret is None else secret
        if not isinstance(self._secret, bytes) or len(self._secret) != 32:
            raise ValueError("a KeyRing secret is 32 bytes (bytes, as secrets.token_bytes(32))")
        self._keys: dict[int, ed25519.Ed25519PrivateKey] = {}
        self._lock = threading.Lock()

    def __reduce__(self) -> tuple[type[KeyRing], tuple[bytes]]:
        return KeyRing, (self._secret,)  # the secret alone: keys are derived again there

    def identity(self, node_id: int) -> NodeIdentity:
        key = self._key(node_id)
        return NodeIdentity(key, public_bytes(key), self._peer_key)

    def _key(self, node_id: int) -> ed25519.Ed25519PrivateKey:
        with self._lock:
            key = self._keys.get(node_id)
            if key is None:
                named = str(node_id).encode()  # any int
                seed = hashlib.blake2b(named, key=self._secret, digest_size=32).digest()
                key = self._keys[node_id] = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
            return key

    def _peer_key(self, node_id: int, credential: bytes) -> NodeVerifyingKey:
        key = self._key(node_id)
        if credential != public_bytes(key):
            raise SecAggError(f"the public key relayed for client {node_id} is not its own")
        return key.public_key()
