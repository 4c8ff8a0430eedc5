"""The hub's certificate authority: it issues every certificate in a pollinate fleet.

Trust model. The hub owns one CA (an EC P-256 key and a self-signed certificate, ``ca.pem`` and
``ca.key`` in its data directory). The CA signs the hub's TLS server certificate and, once a node
has redeemed a one-time join token (``security/tokens.py``), a short-lived client certificate for
that node. Nodes trust exactly this CA, pinned by the fingerprint prefix the join token carries.
A node renews its certificate once two thirds of its lifetime has passed; an expired certificate
cannot be renewed, and the node has to enrol again with a new token.

Users. The CA signs users' certificates too (``sign_user_key``), named ``CN=user:<name>``
with the SAN ``pollinate://user/<name>``: a user certificate never reads as a node's
(``verify_node_certificate`` refuses it) nor a node's as a user's (``verify_user_certificate``).

Invariant: a node's identity is the ``CN=node-<id>`` the hub wrote into its certificate, never
anything the node claims; a user's the ``CN=user:<name>``. The CSR only proves that its sender
holds the private key: ``sign_node_csr`` ignores the CSR's subject and its requested extensions.

>>> from pollinate.security import make_key_and_csr
>>> ca = CertificateAuthority.create()
>>> key_pem, csr_pem = make_key_and_csr()
>>> cert_pem = ca.sign_node_csr(csr_pem, node_id=7)
>>> ca.verify_node_certificate(cert_pem)
7
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from pollinate.checks import integer, number
from pollinate.security.ca_files import (
    CERT_FILE,
    KEY_FILE,
    others_can_access,
    read_ca_certificate,
    read_ca_key,
    write_atomically,
)
from pollinate.security.certificate_fields import (
    CLOCK_SKEW,
    authority_key_id,
    builder,
    key_usage,
    subject_alt_names,
    utc_now,
    x509_name,
)
from pollinate.security.certificates import (
    MAX_NODE_ID,
    RE_ENROL,
    USER_CN_PREFIX,
    USER_NAME,
    aware,
    certificate_fingerprint,
    check_client_usage,
    check_valid_at,
    load_certificate,
    node_id_in,
    user_name_in,
)
from pollinate.security.errors import SecurityError
from pollinate.security.keys import (
    PublicKey,
    SigningKey,
    hash_for,
    private_pem,
    public_der,
    verified_csr_key,
)

__all__ = ["CERT_FILE", "KEY_FILE", "CertificateAuthority"]

logger = logging.getLogger(__name__)

USER_CERT_SECONDS = 90 * 24 * 3600
"""How long a user certificate is valid: a user logs in again after 90 days. Revocation does
not wait for expiry: the hub checks every call against its list of revoked users."""


class CertificateAuthority:
    """The hub's CA. Make one with ``create``, ``load`` or ``load_or_create``."""

    def __init__(self, certificate: x509.Certificate, key: SigningKey) -> None:
        if public_der(certificate.public_key()) != public_der(key.public_key()):
            raise SecurityError(
                "the CA key does not match the CA certificate: ca.key and ca.pem come from "
                "different CAs; restore the matching pair of files"
            )
        self._certificate = certificate
        self._key = key

    @classmethod
    def create(
        cls, common_name: str = "pollinate hub CA", valid_days: int = 3650
    ) -> CertificateAuthority:
        """A new CA: an EC P-256 key and a self-signed certificate valid for ``valid_days``."""
        _require_positive("valid_days", valid_days, "CertificateAuthority.create(valid_days=3650)")
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509_name(common_name)
        start, end = utc_now() - CLOCK_SKEW, utc_now() + timedelta(days=valid_days)
        certificate = (
            builder(name, name, key.public_key(), start, end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(key_usage(signs_certificates=True), critical=True)
            .sign(key, hashes.SHA256())
        )
        return cls(certificate, key)

    @classmethod
    def load(cls, directory: Path) -> CertificateAuthority:
        """The CA saved in ``directory``; ``SecurityError`` if a file is missing or corrupt."""
        directory = Path(directory)
        certificate = read_ca_certificate(directory / CERT_FILE)
        key = read_ca_key(directory / KEY_FILE)
        _warn_if_others_can_read(directory / KEY_FILE)
        return cls(certificate, key)

    @classmethod
    def load_or_create(cls, directory: Path) -> CertificateAuthority:
        """The CA in ``directory``; a new one, saved there, if the directory holds neither file."""
        directory = Path(directory)
        if (directory / CERT_FILE).exists() or (directory / KEY_FILE).exists():
            return cls.load(directory)
        ca = cls.create()
        ca.save(directory)
        logger.info("created a new CA in %s, fingerprint %s", directory, ca.fingerprint)
        return ca

    def save(self, directory: Path) -> None:
        """Write ``ca.key`` (mode 0600) and ``ca.pem`` (0644); never overwrite an existing CA."""
        directory = Path(directory)
        existing = [name for name in (CERT_FILE, KEY_FILE) if (directory / name).exists()]
        if existing:
            raise SecurityError(
                f"refusing to overwrite {' and '.join(existing)} in {directory}: replacing a CA "
                "cuts off every node it enrolled; load it with CertificateAuthority.load(), or "
                "move the files away first"
            )
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomically(directory / KEY_FILE, private_pem(self._key), mode=0o600)
        write_atomically(directory / CERT_FILE, self.ca_pem, mode=0o644)

    @property
    def ca_pem(self) -> bytes:
        """The CA certificate, PEM: what nodes trust (it holds no secret)."""
        return self._certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the CA certificate's DER, lowercase hex (64 digits)."""
        return certificate_fingerprint(self._certificate.public_bytes(serialization.Encoding.DER))

    def __repr__(self) -> str:
        subject = self._certificate.subject.rfc4514_string()
        return f"CertificateAuthority(subject={subject!r}, fingerprint={self.fingerprint[:16]!r})"

    def issue_server_certificate(
        self, hostnames: list[str], ips: list[str], valid_days: int = 365
    ) -> tuple[bytes, bytes]:
        """(certificate PEM, private key PEM) for the hub's TLS server, named by its SANs."""
        _require_positive("valid_days", valid_days, "issue_server_certificate([...], [...], 365)")
        names = subject_alt_names(hostnames, ips)
        key = ec.generate_private_key(ec.SECP256R1())
        common_name = hostnames[0] if hostnames else ips[0]
        certificate = (
            self._leaf_builder(common_name, key.public_key(), timedelta(days=valid_days))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self._key, hash_for(self._key))
        )
        return certificate.public_bytes(serialization.Encoding.PEM), private_pem(key)

    def sign_node_csr(self, csr_pem: bytes, node_id: int, valid_seconds: int = 24 * 3600) -> bytes:
        """A client certificate for ``node_id`` (``CN=node-<id>``) on the CSR's key, PEM.

        It is valid from ``CLOCK_SKEW`` before now until ``valid_seconds`` after now (never past
        the CA's own expiry), with a random serial number.

        Raises ``SecurityError`` if the CSR is unreadable, its signature does not verify or its
        key is weak. Only the CSR's public key is used; the hub decides the name.
        """
        return self.sign_node_key(verified_csr_key(csr_pem), node_id, valid_seconds)

    def sign_node_key(
        self, public_key: PublicKey, node_id: int, valid_seconds: int = 24 * 3600
    ) -> bytes:
        """``sign_node_csr`` for a key already taken from a CSR with ``verified_csr_key``.

        Enrolment checks the CSR before it spends the join token, and signs after: a node
        whose CSR is malformed keeps its token.
        """
        _check_node_id(node_id)
        _require_positive("valid_seconds", valid_seconds, "sign_node_key(key, 7, 24 * 3600)")
        certificate = (
            self._leaf_builder(f"node-{node_id}", public_key, timedelta(seconds=valid_seconds))
            .add_extension(x509.SubjectAlternativeName([_node_uri(node_id)]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(self._key, hash_for(self._key))
        )
        return certificate.public_bytes(serialization.Encoding.PEM)

    def verify_node_certificate(self, cert_pem: bytes, now: datetime | None = None) -> int:
        """The node id in a certificate this CA issued to a node, or ``SecurityError`` saying why.

        ``now`` (timezone-aware; default: the current time) is when the certificate must be valid.
        """
        at = aware(now)
        certificate = load_certificate(cert_pem)
        self._check_issued_here(certificate)
        check_valid_at(certificate, at)
        check_client_usage(certificate)
        return node_id_in(certificate)

    def sign_user_key(
        self, public_key: PublicKey, name: str, valid_seconds: int = USER_CERT_SECONDS
    ) -> bytes:
        """A client certificate for the user ``name`` (``CN=user:<name>``) on a key taken
        from the user's CSR with ``verified_csr_key``, PEM; valid as ``sign_node_key``'s."""
        if not isinstance(name, str) or USER_NAME.fullmatch(name) is None:
            raise ValueError(
                f"name={name!r} is not a user name (1 to 64 letters, digits, '.', '-', '_', "
                "starting with a letter or digit).\nHint: ca.sign_user_key(key, 'alice')"
            )
        _require_positive("valid_seconds", valid_seconds, "sign_user_key(key, 'alice', 86400)")
        lifetime = timedelta(seconds=valid_seconds)
        certificate = (
            self._leaf_builder(f"{USER_CN_PREFIX}{name}", public_key, lifetime)
            .add_extension(x509.SubjectAlternativeName([_user_uri(name)]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(self._key, hash_for(self._key))
        )
        return certificate.public_bytes(serialization.Encoding.PEM)

    def verify_user_certificate(self, cert_pem: bytes, now: datetime | None = None) -> str:
        """The user name in a certificate this CA issued to a user, or ``SecurityError`` saying
        why (a node's certificate is refused: it names no user)."""
        certificate = load_certificate(cert_pem)
        self._check_issued_here(certificate)
        check_valid_at(certificate, aware(now))
        check_client_usage(certificate)
        return user_name_in(certificate)

    # A node certificate is one level below this CA, which is its only possible issuer: checking
    # the signature against our own key is the whole of path validation.
    def _check_issued_here(self, certificate: x509.Certificate) -> None:
        try:
            certificate.verify_directly_issued_by(self._certificate)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
            ours = self._certificate.subject.rfc4514_string()
            raise SecurityError(
                f"certificate was issued by another CA (issuer "
                f"{certificate.issuer.rfc4514_string()!r}; this hub's CA is {ours!r} with "
                f"fingerprint {self.fingerprint[:16]}...): the node enrolled with another hub or "
                f"this hub's CA was replaced; {RE_ENROL}"
            ) from None

    def _leaf_builder(
        self, common_name: str, public_key: PublicKey, lifetime: timedelta
    ) -> x509.CertificateBuilder:
        now = utc_now()
        # A certificate never outlives the CA that vouches for it.
        not_after = min(now + lifetime, self._certificate.not_valid_after_utc)
        issuer = self._certificate.subject
        return (
            builder(x509_name(common_name), issuer, public_key, now - CLOCK_SKEW, not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(key_usage(signs_certificates=False), critical=True)
            .add_extension(authority_key_id(self._certificate), critical=False)
        )


# RFC 5280 verifiers (cryptography's ClientVerifier, webpki) want a SAN in every leaf; the
# node's identity is still its CN, which the hub reads.
def _node_uri(node_id: int) -> x509.UniformResourceIdentifier:
    return x509.UniformResourceIdentifier(f"pollinate://node/{node_id}")


def _user_uri(name: str) -> x509.UniformResourceIdentifier:
    return x509.UniformResourceIdentifier(f"pollinate://user/{name}")


def _check_node_id(node_id: int) -> None:
    integer("node_id", node_id, hint="sign_node_csr(csr, 7)")
    if not 0 <= node_id <= MAX_NODE_ID:
        raise ValueError(f"node_id={node_id!r} is not in 0..2**63-1.\nHint: sign_node_csr(csr, 7)")


def _require_positive(name: str, value: float, example: str) -> None:
    number(name, value, above=0, finite=False, hint=example)


def _warn_if_others_can_read(key_path: Path) -> None:
    if others_can_access(key_path):
        logger.warning(
            "%s can be read by other users; restrict it with `chmod 600 %s`", key_path, key_path
        )
