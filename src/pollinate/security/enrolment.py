"""The enrolment endpoint's identity, and how a new node learns to trust the hub.

A node that holds only a join token cannot verify the hub's CA yet, and gRPC cannot connect
without verifying. So the hub presents, to a client that asks for ``ENROL_SERVER_NAME`` (SNI),
a self-signed certificate whose fingerprint the join token pins (as kubeadm pins its CA): the
node fetches that certificate, checks the pin, and then uses it as the root for a verified TLS
channel over which it sends the token and its CSR. The token never travels in plain text, and
a man in the middle fails the pin check. A user logging in does the same with their token.
Both present the guest certificate meanwhile (``guest.py``).
"""

from __future__ import annotations

import socket
import ssl
import tempfile
from datetime import timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pollinate.security.certificate_fields import CLOCK_SKEW, subject_alt_names, utc_now
from pollinate.security.certificates import certificate_fingerprint
from pollinate.security.errors import SecurityError
from pollinate.security.guest import ENROL_SERVER_NAME, GUEST_CERT_PEM, GUEST_KEY_PEM
from pollinate.security.keys import private_pem
from pollinate.security.tokens import ca_matches_pin

CERT_FILE = "enrol.pem"
KEY_FILE = "enrol.key"


def self_signed_server_certificate(
    hostnames: list[str], ips: list[str] | None = None, valid_days: int = 3650
) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM): a self-signed TLS server identity named by its SANs."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pollinate hub enrolment")])
    now = utc_now()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + timedelta(days=valid_days))
        .add_extension(x509.SubjectAlternativeName(subject_alt_names(hostnames, ips or [])), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM), private_pem(key)


def load_or_create_enrolment_identity(directory: Path) -> tuple[bytes, bytes]:
    """The hub's enrolment identity, kept in ``directory`` so that tokens stay valid. One
    made before the hub served a single address (it is not named ``ENROL_SERVER_NAME``) is
    made again: tokens that pinned it must be created again."""
    cert_path, key_path = directory / CERT_FILE, directory / KEY_FILE
    if cert_path.exists() and key_path.exists():
        cert = cert_path.read_bytes()
        if _names_enrolment(cert):
            return cert, key_path.read_bytes()
    cert, key = self_signed_server_certificate([ENROL_SERVER_NAME])
    directory.mkdir(parents=True, exist_ok=True)
    key_path.touch(mode=0o600)
    key_path.write_bytes(key)
    cert_path.write_bytes(cert)
    return cert, key


def enrolment_pin(cert_pem: bytes) -> str:
    """What a join token pins: the enrolment certificate's SHA-256 fingerprint."""
    return certificate_fingerprint(cert_pem)


def fetch_pinned_certificate(host: str, port: int, pin: str, timeout: float = 10.0) -> bytes:
    """The enrolment certificate the hub presents, if it matches ``pin``; else SecurityError."""
    try:
        pem = _enrolment_certificate(host, port, timeout)
    except OSError as exc:
        raise SecurityError(f"cannot reach the hub at {host}:{port}: {exc}") from None
    if not ca_matches_pin(pem, pin):
        raise SecurityError(
            f"the hub at {host}:{port} presented a certificate that does not match the join "
            "token's pin: this is not the hub that made the token (wrong address, or someone "
            "in between). Check the address, or create a token on the right hub."
        )
    return pem


def _enrolment_certificate(host: str, port: int, timeout: float) -> bytes:
    """The certificate the hub presents under ``ENROL_SERVER_NAME``, unverified (the caller
    checks its pin), fetched as a guest."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with tempfile.TemporaryDirectory() as directory:  # ssl loads a client identity from files
        cert, key = Path(directory) / "guest.pem", Path(directory) / "guest.key"
        cert.write_bytes(GUEST_CERT_PEM)
        key.write_bytes(GUEST_KEY_PEM)
        context.load_cert_chain(cert, key)
    with (
        socket.create_connection((host.strip("[]"), port), timeout=timeout) as raw,
        context.wrap_socket(raw, server_hostname=ENROL_SERVER_NAME) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    if der is None:
        raise OSError("the hub presented no certificate")
    return ssl.DER_cert_to_PEM_cert(der).encode()


def _names_enrolment(cert_pem: bytes) -> bool:
    try:
        names = x509.load_pem_x509_certificate(cert_pem).extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        )
    except (ValueError, x509.ExtensionNotFound):
        return False
    return ENROL_SERVER_NAME in names.value.get_values_for_type(x509.DNSName)
