"""Where a node's SecAgg signing key and its peers' keys come from, in each engine.

- Deployment: the node's own mTLS key signs, its certificate is its credential, and a peer's
  certificate must be issued by the fleet's CA to the node id it claims (``CN=node-<id>``).
- Simulation: virtual clients share one process, so a ``KeyRing`` plays the fleet: it makes an
  Ed25519 key per client and knows every public key, as a CA knows the certificates it issued.
"""

from __future__ import annotations

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
    """The simulation's stand-in for a fleet CA: one Ed25519 key per virtual client."""

    def __init__(self) -> None:
        self._keys: dict[int, ed25519.Ed25519PrivateKey] = {}
        self._lock = threading.Lock()

    def identity(self, node_id: int) -> NodeIdentity:
        key = self._key(node_id)
        return NodeIdentity(key, public_bytes(key), self._peer_key)

    def _key(self, node_id: int) -> ed25519.Ed25519PrivateKey:
        with self._lock:
            key = self._keys.get(node_id)
            if key is None:
                key = self._keys[node_id] = ed25519.Ed25519PrivateKey.generate()
            return key

    def _peer_key(self, node_id: int, credential: bytes) -> NodeVerifyingKey:
        key = self._key(node_id)
        if credential != public_bytes(key):
            raise SecAggError(f"the public key relayed for client {node_id} is not its own")
        return key.public_key()
