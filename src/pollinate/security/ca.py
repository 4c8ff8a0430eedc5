"""The hub's certificate authority: it issues every certificate in a pollinate fleet.

Trust model. The hub owns one CA (an EC P-256 key and a self-signed certificate, ``ca.pem`` and
``ca.key`` in its data directory). The CA signs the hub's TLS server certificate and, once a node
has redeemed a one-time join token (``security/tokens.py``), a short-lived client certificate for
that node. Nodes trust exactly this CA, pinned by the fingerprint prefix the join token carries.
A node renews its certificate once two thirds of its lifetime has passed; an expired certificate
cannot be renewed, and the node has to enrol again with a new token.

Invariant: a node's identity is the ``CN=node-<id>`` the hub wrote into its certificate, never
anything the node claims. The CSR only proves that the node holds its private key:
``sign_node_csr`` ignores the CSR's subject and its requested extensions.

>>> ca = CertificateAuthority.create()
>>> key_pem, csr_pem = make_key_and_csr()
>>> cert_pem = ca.sign_node_csr(csr_pem, node_id=7)
>>> ca.verify_node_certificate(cert_pem)
7
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
import re
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pollinate.errors import PollinateError

__all__ = [
    "CERT_FILE",
    "KEY_FILE",
    "CertificateAuthority",
    "SecurityError",
    "certificate_expiry",
    "certificate_fingerprint",
    "make_key_and_csr",
    "node_id_from_certificate",
    "should_renew",
]

logger = logging.getLogger(__name__)

CERT_FILE = "ca.pem"
KEY_FILE = "ca.key"

# Certificates start this long before they are issued, so that a node whose clock runs a little
# behind the hub's can use its certificate at once.
CLOCK_SKEW = timedelta(minutes=5)
MAX_NODE_ID = 2**63 - 1
_NODE_CN = re.compile(r"node-(0|[1-9][0-9]{0,18})")
_RE_ENROL = "enrol the node again with a new token (`pollinate token create`)"

SigningKey = (
    ec.EllipticCurvePrivateKey
    | rsa.RSAPrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
)
PublicKey = (
    ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
)


class SecurityError(PollinateError):
    """A certificate, CSR, CA file or join token was refused; the message says why and what to do.

    It will move to ``pollinate.errors`` beside the other errors.
    """


class CertificateAuthority:
    """The hub's CA. Make one with ``create``, ``load`` or ``load_or_create``."""

    def __init__(self, certificate: x509.Certificate, key: SigningKey) -> None:
        if _public_der(certificate.public_key()) != _public_der(key.public_key()):
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
        name = _name(common_name)
        start, end = _utc_now() - CLOCK_SKEW, _utc_now() + timedelta(days=valid_days)
        certificate = (
            _builder(name, name, key.public_key(), start, end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(signs_certificates=True), critical=True)
            .sign(key, hashes.SHA256())
        )
        return cls(certificate, key)

    @classmethod
    def load(cls, directory: Path) -> CertificateAuthority:
        """The CA saved in ``directory``; ``SecurityError`` if a file is missing or corrupt."""
        directory = Path(directory)
        certificate = _parse_ca_certificate(directory / CERT_FILE)
        key = _parse_ca_key(directory / KEY_FILE)
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
        _write_atomically(directory / KEY_FILE, _private_pem(self._key), mode=0o600)
        _write_atomically(directory / CERT_FILE, self.ca_pem, mode=0o644)

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
        names = _subject_alt_names(hostnames, ips)
        key = ec.generate_private_key(ec.SECP256R1())
        common_name = hostnames[0] if hostnames else ips[0]
        certificate = (
            self._leaf_builder(common_name, key.public_key(), timedelta(days=valid_days))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self._key, _hash_for(self._key))
        )
        return certificate.public_bytes(serialization.Encoding.PEM), _private_pem(key)

    def sign_node_csr(self, csr_pem: bytes, node_id: int, valid_seconds: int = 24 * 3600) -> bytes:
        """A client certificate for ``node_id`` (``CN=node-<id>``) on the CSR's key, PEM.

        It is valid from ``CLOCK_SKEW`` before now until ``valid_seconds`` after now (never past
        the CA's own expiry), with a random serial number.

        Raises ``SecurityError`` if the CSR is unreadable, its signature does not verify or its
        key is weak. Only the CSR's public key is used; the hub decides the name.
        """
        _check_node_id(node_id)
        _require_positive("valid_seconds", valid_seconds, "sign_node_csr(csr, 7, 24 * 3600)")
        public_key = _verified_csr_key(csr_pem)
        certificate = (
            self._leaf_builder(f"node-{node_id}", public_key, timedelta(seconds=valid_seconds))
            .add_extension(x509.SubjectAlternativeName([_node_uri(node_id)]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(self._key, _hash_for(self._key))
        )
        return certificate.public_bytes(serialization.Encoding.PEM)

    def verify_node_certificate(self, cert_pem: bytes, now: datetime | None = None) -> int:
        """The node id in a certificate this CA issued to a node, or ``SecurityError`` saying why.

        ``now`` (timezone-aware; default: the current time) is when the certificate must be valid.
        """
        at = _aware(now)
        certificate = _load_certificate(cert_pem)
        self._check_issued_here(certificate)
        _check_valid_at(certificate, at)
        _check_client_usage(certificate)
        return _node_id(certificate)

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
                f"this hub's CA was replaced; {_RE_ENROL}"
            ) from None

    def _leaf_builder(
        self, common_name: str, public_key: PublicKey, lifetime: timedelta
    ) -> x509.CertificateBuilder:
        now = _utc_now()
        # A certificate never outlives the CA that vouches for it.
        not_after = min(now + lifetime, self._certificate.not_valid_after_utc)
        issuer = self._certificate.subject
        return (
            _builder(_name(common_name), issuer, public_key, now - CLOCK_SKEW, not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(signs_certificates=False), critical=True)
            .add_extension(_authority_key_id(self._certificate), critical=False)
        )


def certificate_fingerprint(cert_pem_or_der: bytes) -> str:
    """SHA-256 of a certificate's DER encoding, lowercase hex; ``SecurityError`` if unreadable."""
    der = _load_certificate(cert_pem_or_der).public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).hexdigest()


def node_id_from_certificate(cert_pem_or_der: bytes) -> int:
    """The node id in a node certificate's ``CN=node-<id>``. It does not check who signed it."""
    return _node_id(_load_certificate(cert_pem_or_der))


def verify_peer_certificate(
    cert_pem_or_der: bytes, ca_pem: bytes, now: datetime | None = None
) -> tuple[int, PublicKey]:
    """(node id, public key) of a peer node's certificate, checked with only the CA certificate
    (a node checking another node's identity); ``SecurityError`` saying why it fails."""
    certificate = _load_certificate(cert_pem_or_der)
    try:
        certificate.verify_directly_issued_by(_load_certificate(ca_pem))
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        raise SecurityError(
            f"certificate of {certificate.subject.rfc4514_string()!r} was not issued by this "
            "fleet's CA"
        ) from None
    _check_valid_at(certificate, _aware(now))
    _check_client_usage(certificate)
    return _node_id(certificate), _strong_key(certificate.public_key())


def make_key_and_csr() -> tuple[bytes, bytes]:
    """For a node: (private key PEM, CSR PEM) with a new EC P-256 key. Keep the key on the node."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(_name("pollinate node"))
        .sign(key, hashes.SHA256())
    )
    return _private_pem(key), csr.public_bytes(serialization.Encoding.PEM)


def certificate_expiry(cert_pem: bytes) -> datetime:
    """When a certificate expires (its notAfter), timezone-aware UTC."""
    return _load_certificate(cert_pem).not_valid_after_utc


def should_renew(cert_pem: bytes, now: datetime | None = None, fraction: float = 2 / 3) -> bool:
    """True once ``fraction`` of the certificate's lifetime has passed (and ever after)."""
    if not 0 < fraction <= 1:
        raise ValueError(
            f"fraction={fraction!r} is not in (0, 1].\nHint: should_renew(cert_pem, fraction=2/3)"
        )
    certificate = _load_certificate(cert_pem)
    start, end = certificate.not_valid_before_utc, certificate.not_valid_after_utc
    return _aware(now) >= start + (end - start) * fraction


# --- certificates -------------------------------------------------------------------------------


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: PublicKey,
    not_before: datetime,
    not_after: datetime,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_usage(*, signs_certificates: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not signs_certificates,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        encipher_only=False,
        decipher_only=False,
    )


def _authority_key_id(ca_certificate: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = ca_certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    except x509.ExtensionNotFound:
        public_key = ca_certificate.public_key()
        if not isinstance(public_key, PublicKey):
            raise SecurityError("the CA certificate's key type cannot sign certificates") from None
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key)
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski.value)


def _subject_alt_names(hostnames: list[str], ips: list[str]) -> list[x509.GeneralName]:
    if isinstance(hostnames, str) or isinstance(ips, str):
        raise TypeError(
            "hostnames and ips must be lists of strings, not a single string.\n"
            "Hint: ca.issue_server_certificate(['hub.example.org'], ['127.0.0.1'])"
        )
    if not hostnames and not ips:
        raise ValueError(
            "a server certificate needs at least one hostname or IP address for nodes to check.\n"
            "Hint: ca.issue_server_certificate(['localhost'], ['127.0.0.1'])"
        )
    names: list[x509.GeneralName] = [x509.DNSName(host) for host in hostnames]
    for ip in ips:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(ip)))
        except ValueError:
            raise ValueError(
                f"{ip!r} is not an IP address.\nHint: put host names in hostnames, e.g. "
                "ca.issue_server_certificate(['hub.example.org'], ['10.0.0.5'])"
            ) from None
    return names


def _verified_csr_key(csr_pem: bytes) -> PublicKey:
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
        signature_ok = csr.is_signature_valid
        public_key = csr.public_key()
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise SecurityError(
            "the certificate signing request is not a readable PEM CSR: the node must send the "
            "CSR made by make_key_and_csr()"
        ) from None
    if not signature_ok:
        raise SecurityError(
            "the CSR's signature does not verify: it was altered on the way or not signed by the "
            "key it carries; the node must send a new CSR made by make_key_and_csr()"
        )
    return _strong_key(public_key)


def _strong_key(public_key: object) -> PublicKey:
    if isinstance(public_key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return public_key
    if isinstance(public_key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        minimum = 2048 if isinstance(public_key, rsa.RSAPublicKey) else 256
        if public_key.key_size >= minimum:
            return public_key
    raise SecurityError(
        f"the CSR's key ({type(public_key).__name__}) is too weak or of an unsupported type: "
        "use an EC P-256 key, as make_key_and_csr() does"
    )


def _load_certificate(data: bytes) -> x509.Certificate:
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


def _check_valid_at(certificate: x509.Certificate, at: datetime) -> None:
    if at > certificate.not_valid_after_utc:
        raise SecurityError(
            f"certificate expired at {_iso(certificate.not_valid_after_utc)} (it is now "
            f"{_iso(at)}); the node must re-enrol with a new token (`pollinate token create`)"
        )
    if at < certificate.not_valid_before_utc:
        raise SecurityError(
            f"certificate is not valid before {_iso(certificate.not_valid_before_utc)} (it is now "
            f"{_iso(at)}): the hub's and the node's clocks disagree; synchronise them (NTP)"
        )


def _check_client_usage(certificate: x509.Certificate) -> None:
    try:
        usage = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usage = x509.ExtendedKeyUsage([])
    if ExtendedKeyUsageOID.CLIENT_AUTH not in usage:
        raise SecurityError(
            f"certificate {certificate.subject.rfc4514_string()!r} is not a node certificate (it "
            f"is not for TLS client authentication); {_RE_ENROL}"
        )


def _node_id(certificate: x509.Certificate) -> int:
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = names[0].value if len(names) == 1 else None
    match = _NODE_CN.fullmatch(value) if isinstance(value, str) else None
    if match is None or int(match[1]) > MAX_NODE_ID:
        raise SecurityError(
            f"certificate subject {certificate.subject.rfc4514_string()!r} is not a node's: the "
            f"hub names nodes CN=node-<id> with 0 <= id < 2**63; {_RE_ENROL}"
        )
    return int(match[1])


# RFC 5280 verifiers (cryptography's ClientVerifier, webpki) want a SAN in every leaf; the
# node's identity is still its CN, which the hub reads.
def _node_uri(node_id: int) -> x509.UniformResourceIdentifier:
    return x509.UniformResourceIdentifier(f"pollinate://node/{node_id}")


def _check_node_id(node_id: int) -> None:
    if not isinstance(node_id, int) or isinstance(node_id, bool):
        raise TypeError(f"node_id must be an int, got {node_id!r}.\nHint: sign_node_csr(csr, 7)")
    if not 0 <= node_id <= MAX_NODE_ID:
        raise ValueError(f"node_id={node_id!r} is not in 0..2**63-1.\nHint: sign_node_csr(csr, 7)")


# --- keys and files -----------------------------------------------------------------------------


def _hash_for(key: SigningKey) -> hashes.SHA256 | None:
    # Ed25519 and Ed448 sign with their own built-in hash.
    is_edwards = isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey)
    return None if is_edwards else hashes.SHA256()


def _public_der(public_key: object) -> bytes:
    if not isinstance(public_key, PublicKey):
        return b""
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _private_pem(key: SigningKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise SecurityError(
            f"{path} is missing: the hub's CA needs both {CERT_FILE} and {KEY_FILE} in "
            f"{path.parent}; restore it, or start from an empty directory to create a new CA "
            "(every node then has to enrol again)"
        ) from None
    except OSError as error:
        raise SecurityError(f"cannot read {path}: {error.strerror}") from None


def _parse_ca_certificate(path: Path) -> x509.Certificate:
    data = _read(path)
    try:
        certificate = x509.load_pem_x509_certificate(data)
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    except (ValueError, x509.ExtensionNotFound):
        constraints = None
    if constraints is None or not constraints.value.ca:
        raise SecurityError(
            f"{path} is not a PEM CA certificate (corrupt, or not a CA: basicConstraints CA is "
            f"not set); restore the file, or give the hub the CA certificate it should use"
        )
    return certificate


def _parse_ca_key(path: Path) -> SigningKey:
    try:
        key = serialization.load_pem_private_key(_read(path), password=None)
    except TypeError:
        raise SecurityError(
            f"{path} is encrypted: the hub needs an unencrypted key (protect it with file "
            "permissions, mode 0600); decrypt it with `openssl pkey -in ca.key -out ca.key`"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        key = None
    if not isinstance(key, SigningKey):
        raise SecurityError(
            f"{path} is not a PEM private key that can sign certificates (corrupt or wrong "
            f"file); restore the key that belongs to {CERT_FILE}"
        )
    return key


def _warn_if_others_can_read(path: Path) -> None:
    if os.name == "posix" and path.stat().st_mode & 0o077:
        logger.warning("%s can be read by other users; restrict it with `chmod 600 %s`", path, path)


def _write_atomically(path: Path, data: bytes, *, mode: int) -> None:
    # Created with its final mode (no window in which the key is readable by others), then moved
    # into place, so a crash never leaves a half-written file under the real name.
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(descriptor, "wb") as file:
            os.fchmod(file.fileno(), mode)
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


# --- time ---------------------------------------------------------------------------------------


def _utc_now() -> datetime:
    # X.509 times have whole seconds.
    return datetime.now(UTC).replace(microsecond=0)


def _aware(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        raise ValueError(
            f"now={now!r} has no time zone, so it is ambiguous.\n"
            "Hint: pass datetime.now(timezone.utc) or leave it out"
        )
    return now.astimezone(UTC)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _require_positive(name: str, value: float, example: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{name}={value!r} must be a positive number.\nHint: {example}")
