"""Reading and checking certificates: who a certificate names, whether it is valid now and for
what, its fingerprint, and when to renew it.

A node's identity is the ``CN=node-<id>`` the hub wrote into its certificate, a user's the
``CN=user:<name>`` (``user_name_in``): neither reads as the other, so a user certificate never
passes for a node's, nor a node's for a user's. These functions read them; only a check of who
signed the certificate (``CertificateAuthority.verify_node_certificate`` or
``verify_user_certificate`` on the hub, ``verify_peer_certificate`` on a node) makes it
trustworthy.

>>> from pollinate.security import CertificateAuthority, make_key_and_csr
>>> ca = CertificateAuthority.create()
>>> cert_pem = ca.sign_node_csr(make_key_and_csr()[1], node_id=7)
>>> verify_peer_certificate(cert_pem, ca.ca_pem)[0]
7
>>> should_renew(cert_pem)
False
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pollinate.security.errors import SecurityError
from pollinate.security.keys import PublicKey, strong_key

__all__ = [
    "MAX_NODE_ID",
    "RE_ENROL",
    "aware",
    "certificate_expiry",
    "certificate_fingerprint",
    "check_client_usage",
    "check_valid_at",
    "iso",
    "load_certificate",
    "names_a_user",
    "node_id_from_certificate",
    "node_id_in",
    "should_renew",
    "user_name_in",
    "verify_peer_certificate",
]

MAX_NODE_ID = 2**63 - 1
_NODE_CN = re.compile(r"node-(0|[1-9][0-9]{0,18})")
USER_CN_PREFIX = "user:"
USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
"""A user's name: 1 to 64 letters, digits, '.', '-', '_', starting with a letter or digit."""
RE_ENROL = "enrol the node again with a new token (`pollinate token create`)"


def certificate_fingerprint(cert_pem_or_der: bytes) -> str:
    """SHA-256 of a certificate's DER encoding, lowercase hex; ``SecurityError`` if unreadable."""
    der = load_certificate(cert_pem_or_der).public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).hexdigest()


def node_id_from_certificate(cert_pem_or_der: bytes) -> int:
    """The node id in a node certificate's ``CN=node-<id>``. It does not check who signed it."""
    return node_id_in(load_certificate(cert_pem_or_der))


def verify_peer_certificate(
    cert_pem_or_der: bytes, ca_pem: bytes, now: datetime | None = None
) -> tuple[int, PublicKey]:
    """(node id, public key) of a peer node's certificate, checked with only the CA certificate
    (a node checking another node's identity); ``SecurityError`` saying why it fails."""
    certificate = load_certificate(cert_pem_or_der)
    try:
        certificate.verify_directly_issued_by(load_certificate(ca_pem))
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        raise SecurityError(
            f"certificate of {certificate.subject.rfc4514_string()!r} was not issued by this "
            "fleet's CA"
        ) from None
    check_valid_at(certificate, aware(now))
    check_client_usage(certificate)
    return node_id_in(certificate), strong_key(certificate.public_key())


def certificate_expiry(cert_pem: bytes) -> datetime:
    """When a certificate expires (its notAfter), timezone-aware UTC."""
    return load_certificate(cert_pem).not_valid_after_utc


def should_renew(cert_pem: bytes, now: datetime | None = None, fraction: float = 2 / 3) -> bool:
    """True once ``fraction`` of the certificate's lifetime has passed (and ever after)."""
    if not 0 < fraction <= 1:
        raise ValueError(
            f"fraction={fraction!r} is not in (0, 1].\nHint: should_renew(cert_pem, fraction=2/3)"
        )
    certificate = load_certificate(cert_pem)
    start, end = certificate.not_valid_before_utc, certificate.not_valid_after_utc
    return aware(now) >= start + (end - start) * fraction


def load_certificate(data: bytes) -> x509.Certificate:
    """A certificate from PEM or DER bytes; ``SecurityError`` if it is neither."""
    if not isinstance(data, bytes | bytearray):
        raise TypeError(
            f"expected certificate bytes (PEM or DER), got {type(data).__name__}.\n"
            "Hint: node_id_from_certificate(Path('node.pem').read_bytes())"
        )
    try:
        if bytes(data).lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(bytes(data))
        return x509.load_der_x509_certificate(bytes(data))
    except ValueError:
        raise SecurityError(
            f"not an X.509 certificate ({len(data)} bytes that are neither PEM nor DER): "
            "send the certificate PEM the hub issued"
        ) from None


def check_valid_at(certificate: x509.Certificate, at: datetime) -> None:
    """``SecurityError`` unless ``at`` is within the certificate's validity period."""
    if at > certificate.not_valid_after_utc:
        raise SecurityError(
            f"certificate expired at {iso(certificate.not_valid_after_utc)} (it is now "
            f"{iso(at)}); the node must re-enrol with a new token (`pollinate token create`)"
        )
    if at < certificate.not_valid_before_utc:
        raise SecurityError(
            f"certificate is not valid before {iso(certificate.not_valid_before_utc)} (it is now "
            f"{iso(at)}): the hub's and the node's clocks disagree; synchronise them (NTP)"
        )


def check_client_usage(certificate: x509.Certificate) -> None:
    """``SecurityError`` unless the certificate is for TLS client authentication, as a node's is."""
    try:
        usage = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usage = x509.ExtendedKeyUsage([])
    if ExtendedKeyUsageOID.CLIENT_AUTH not in usage:
        raise SecurityError(
            f"certificate {certificate.subject.rfc4514_string()!r} is not a node certificate (it "
            f"is not for TLS client authentication); {RE_ENROL}"
        )


def node_id_in(certificate: x509.Certificate) -> int:
    """The id in the certificate's ``CN=node-<id>``; ``SecurityError`` if it names no node."""
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = names[0].value if len(names) == 1 else None
    match = _NODE_CN.fullmatch(value) if isinstance(value, str) else None
    if match is None or int(match[1]) > MAX_NODE_ID:
        raise SecurityError(
            f"certificate subject {certificate.subject.rfc4514_string()!r} is not a node's: the "
            f"hub names nodes CN=node-<id> with 0 <= id < 2**63; {RE_ENROL}"
        )
    return int(match[1])


def names_a_user(certificate: x509.Certificate) -> bool:
    """Whether the certificate's CN claims a user (``CN=user:...``), not a node. It reads the
    claim only: ``user_name_in`` checks it, the CA's signature makes it true."""
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = names[0].value if len(names) == 1 else None
    return isinstance(value, str) and value.startswith(USER_CN_PREFIX)


def user_name_in(certificate: x509.Certificate) -> str:
    """The name in the certificate's ``CN=user:<name>``; ``SecurityError`` if it names no
    user (a node's certificate names none)."""
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = names[0].value if len(names) == 1 else None
    name = value.removeprefix(USER_CN_PREFIX) if isinstance(value, str) else ""
    if not names_a_user(certificate) or USER_NAME.fullmatch(name) is None:
        raise SecurityError(
            f"certificate subject {certificate.subject.rfc4514_string()!r} is not a user's: the "
            "hub names users CN=user:<name>; log in with the token an admin gives you "
            "(`pollinate login --hub HOST:PORT --token TOKEN`)"
        )
    return name


def aware(now: datetime | None) -> datetime:
    """``now`` in UTC (default: the current time); ``ValueError`` if it has no time zone."""
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        raise ValueError(
            f"now={now!r} has no time zone, so it is ambiguous.\n"
            "Hint: pass datetime.now(timezone.utc) or leave it out"
        )
    return now.astimezone(UTC)


def iso(moment: datetime) -> str:
    """``moment`` as ISO 8601 UTC to the second, for messages."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
