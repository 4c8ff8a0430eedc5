"""In deployment a node signs its SecAgg keys with its certificate key, and its peers accept
only a certificate the fleet's CA issued to the node id it claims (real certificates)."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime, timedelta

import pytest

from pollinate.secagg.crypto import sign, verify
from pollinate.secagg.identity import KeyRing, certificate_identity
from pollinate.secagg.messages import SecAggError
from pollinate.security import (
    CertificateAuthority,
    NodeCredentials,
    SecurityError,
    make_key_and_csr,
    verify_peer_certificate,
)


def node(ca: CertificateAuthority, node_id: int) -> NodeCredentials:
    key, csr = make_key_and_csr()
    return NodeCredentials(key, ca.sign_node_csr(csr, node_id=node_id), ca.ca_pem)


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create()


def test_a_peer_with_the_fleets_certificate_is_trusted_and_its_signature_checks(ca) -> None:  # type: ignore[no-untyped-def]
    mine, peer = certificate_identity(node(ca, 1)), certificate_identity(node(ca, 2))
    key = mine.peer_key(2, peer.credential)
    assert verify(key, sign(peer.signing_key, b"keys"), b"keys")
    assert not verify(key, sign(mine.signing_key, b"keys"), b"keys")


def test_a_certificate_of_another_node_is_refused(ca) -> None:  # type: ignore[no-untyped-def]
    mine, peer = certificate_identity(node(ca, 1)), certificate_identity(node(ca, 2))
    with pytest.raises(SecAggError, match="node 2's, not node 7's"):
        mine.peer_key(7, peer.credential)


def test_a_certificate_from_another_ca_is_refused(ca) -> None:  # type: ignore[no-untyped-def]
    mine = certificate_identity(node(ca, 1))
    stranger = certificate_identity(node(CertificateAuthority.create(), 2))
    with pytest.raises(SecurityError, match="not issued by this fleet's CA"):
        mine.peer_key(2, stranger.credential)


def test_an_expired_certificate_is_refused(ca) -> None:  # type: ignore[no-untyped-def]
    peer = node(ca, 2)
    later = datetime.now(UTC) + timedelta(days=3)
    with pytest.raises(SecurityError, match="expired"):
        verify_peer_certificate(peer.cert_pem, ca.ca_pem, now=later)


def test_a_key_ring_pickled_to_another_process_makes_the_same_keys() -> None:
    """The Ray engine's workers each hold a copy of the run's ring: a client's signature
    made on one checks on another; a ring with another secret refuses its credential."""
    ring = KeyRing()
    there = pickle.loads(pickle.dumps(ring))
    signer, checker = ring.identity(3), there.identity(5)
    key = checker.peer_key(3, signer.credential)
    assert verify(key, sign(signer.signing_key, b"keys"), b"keys")
    assert signer.credential != ring.identity(4).credential
    with pytest.raises(SecAggError, match="not its own"):
        KeyRing().identity(5).peer_key(3, signer.credential)
    with pytest.raises(ValueError, match="32 bytes"):
        KeyRing(b"short")
