"""The hub's CA: what it issues, what it refuses, and how it is kept on disk."""

from __future__ import annotations

import hashlib
import ipaddress
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store

from pollinate.errors import PollinateError
from pollinate.security import (
    CertificateAuthority,
    SecurityError,
    certificate_expiry,
    make_key_and_csr,
    node_id_from_certificate,
    should_renew,
)
from pollinate.security.keys import verified_csr_key


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create()


@pytest.fixture(scope="module")
def other_ca() -> CertificateAuthority:
    return CertificateAuthority.create()  # same default name as `ca`, different key


@pytest.fixture(scope="module")
def node_cert(ca: CertificateAuthority) -> bytes:
    return ca.sign_node_csr(make_key_and_csr()[1], node_id=42, valid_seconds=3600)


def load(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def csr_named(common_name: str) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


def verifier(ca: CertificateAuthority) -> PolicyBuilder:
    return PolicyBuilder().store(Store([load(ca.ca_pem)])).time(datetime.now(UTC))


# --- the CA itself ------------------------------------------------------------------------------


def test_a_new_ca_is_a_self_signed_p256_ca(ca: CertificateAuthority) -> None:
    certificate = load(ca.ca_pem)
    certificate.verify_directly_issued_by(certificate)
    assert certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    public_key = certificate.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert public_key.curve.name == "secp256r1"


def test_fingerprint_is_the_sha256_of_the_certificate_der(ca: CertificateAuthority) -> None:
    der = load(ca.ca_pem).public_bytes(serialization.Encoding.DER)
    assert ca.fingerprint == hashlib.sha256(der).hexdigest()
    assert ca.fingerprint[:16] in repr(ca)


def test_save_then_load_gives_back_the_same_ca(ca: CertificateAuthority, tmp_path: Path) -> None:
    ca.save(tmp_path / "hub")
    loaded = CertificateAuthority.load(tmp_path / "hub")
    assert loaded.fingerprint == ca.fingerprint
    cert = loaded.sign_node_csr(make_key_and_csr()[1], node_id=5)
    assert ca.verify_node_certificate(cert) == 5  # the loaded key is the same key


def test_the_ca_key_is_readable_by_its_owner_only(ca: CertificateAuthority, tmp_path: Path) -> None:
    ca.save(tmp_path)
    assert stat.S_IMODE((tmp_path / "ca.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "ca.pem").stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca.key", "ca.pem"]  # no temp files


def test_save_never_overwrites_a_ca(
    ca: CertificateAuthority, other_ca: CertificateAuthority, tmp_path: Path
) -> None:
    ca.save(tmp_path)
    with pytest.raises(SecurityError, match="refusing to overwrite ca.pem and ca.key"):
        other_ca.save(tmp_path)
    assert CertificateAuthority.load(tmp_path).fingerprint == ca.fingerprint


def test_load_or_create_creates_once_then_loads(tmp_path: Path) -> None:
    first = CertificateAuthority.load_or_create(tmp_path / "data")
    again = CertificateAuthority.load_or_create(tmp_path / "data")
    assert again.fingerprint == first.fingerprint


def test_load_names_the_missing_file(ca: CertificateAuthority, tmp_path: Path) -> None:
    ca.save(tmp_path)
    (tmp_path / "ca.key").unlink()
    with pytest.raises(SecurityError, match=r"ca.key is missing.*needs both ca.pem and ca.key"):
        CertificateAuthority.load(tmp_path)
    with pytest.raises(SecurityError, match="ca.key is missing"):
        CertificateAuthority.load_or_create(tmp_path)  # never silently replaces half a CA


@pytest.mark.parametrize("name", ["ca.pem", "ca.key"])
def test_load_refuses_a_corrupt_file(ca: CertificateAuthority, tmp_path: Path, name: str) -> None:
    ca.save(tmp_path)
    (tmp_path / name).write_bytes(b"-----BEGIN garbage-----\n")
    with pytest.raises(SecurityError, match=f"{name} is not a PEM"):
        CertificateAuthority.load(tmp_path)


def test_load_refuses_a_key_from_another_ca(
    ca: CertificateAuthority, other_ca: CertificateAuthority, tmp_path: Path
) -> None:
    ca.save(tmp_path / "a")
    other_ca.save(tmp_path / "b")
    (tmp_path / "a" / "ca.key").write_bytes((tmp_path / "b" / "ca.key").read_bytes())
    with pytest.raises(SecurityError, match="does not match the CA certificate"):
        CertificateAuthority.load(tmp_path / "a")


def test_load_refuses_a_certificate_that_is_not_a_ca(
    ca: CertificateAuthority, node_cert: bytes, tmp_path: Path
) -> None:
    ca.save(tmp_path)
    (tmp_path / "ca.pem").write_bytes(node_cert)
    with pytest.raises(SecurityError, match="not a CA"):
        CertificateAuthority.load(tmp_path)


def test_security_error_is_a_pollinate_error() -> None:
    assert issubclass(SecurityError, PollinateError)


# --- the hub's server certificate ---------------------------------------------------------------


def test_server_certificate_verifies_for_its_names_and_addresses(ca: CertificateAuthority) -> None:
    cert_pem, key_pem = ca.issue_server_certificate(["localhost", "hub.example.org"], ["127.0.0.1"])
    certificate = load(cert_pem)
    for name in (
        x509.DNSName("hub.example.org"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ):
        chain = verifier(ca).build_server_verifier(name).verify(certificate, [])
        assert chain[-1] == load(ca.ca_pem)
    with pytest.raises(x509.verification.VerificationError):
        verifier(ca).build_server_verifier(x509.DNSName("evil.example.org")).verify(certificate, [])
    usage = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert key.public_key() == certificate.public_key()


def test_server_certificate_takes_ipv6_and_needs_a_name(ca: CertificateAuthority) -> None:
    certificate = load(ca.issue_server_certificate([], ["::1"])[0])
    sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("::1")]
    with pytest.raises(ValueError, match="at least one hostname or IP"):
        ca.issue_server_certificate([], [])
    with pytest.raises(ValueError, match="'hub.local' is not an IP address"):
        ca.issue_server_certificate([], ["hub.local"])
    one_string: Any = "localhost"
    with pytest.raises(TypeError, match="lists of strings"):
        ca.issue_server_certificate(one_string, [])


# --- node certificates --------------------------------------------------------------------------


def test_the_hub_names_the_node_whatever_its_csr_claims(ca: CertificateAuthority) -> None:
    cert_pem = ca.sign_node_csr(csr_named("node-1"), node_id=42)
    certificate = load(cert_pem)
    assert certificate.subject.rfc4514_string() == "CN=node-42"
    assert ca.verify_node_certificate(cert_pem) == 42
    assert node_id_from_certificate(cert_pem) == 42
    assert node_id_from_certificate(certificate.public_bytes(serialization.Encoding.DER)) == 42


def test_node_certificate_is_a_short_lived_client_certificate_on_the_csr_key(
    ca: CertificateAuthority,
) -> None:
    key_pem, csr_pem = make_key_and_csr()
    certificate = load(ca.sign_node_csr(csr_pem, node_id=3, valid_seconds=600))
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert key.public_key() == certificate.public_key()
    usage = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    expiry = certificate.not_valid_after_utc - datetime.now(UTC)
    assert timedelta(seconds=590) < expiry <= timedelta(seconds=600)
    verifier(ca).build_client_verifier().verify(certificate, [])  # a strict RFC 5280 check


def test_serial_numbers_are_random(ca: CertificateAuthority) -> None:
    csr = make_key_and_csr()[1]
    serials = {load(ca.sign_node_csr(csr, node_id=1)).serial_number for _ in range(3)}
    assert len(serials) == 3 and min(serials).bit_length() > 64


def test_a_tampered_csr_is_refused(ca: CertificateAuthority) -> None:
    csr = x509.load_pem_x509_csr(csr_named("node-aaaa"))
    der = csr.public_bytes(serialization.Encoding.DER).replace(b"node-aaaa", b"node-bbbb")
    tampered = x509.load_der_x509_csr(der).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(SecurityError, match="signature does not verify"):
        ca.sign_node_csr(tampered, node_id=1)


def test_garbage_and_weak_csrs_are_refused(ca: CertificateAuthority) -> None:
    with pytest.raises(SecurityError, match="not a readable PEM CSR"):
        ca.sign_node_csr(b"hello", node_id=1)
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(weak, hashes.SHA256())
    with pytest.raises(SecurityError, match="too weak"):
        ca.sign_node_csr(csr.public_bytes(serialization.Encoding.PEM), node_id=1)


def test_a_key_checked_from_its_csr_is_signed_as_the_csr_would_be(
    ca: CertificateAuthority,
) -> None:
    # enrolment checks the CSR before it spends the token, and signs its key afterwards
    key_pem, csr_pem = make_key_and_csr()
    certificate = load(ca.sign_node_key(verified_csr_key(csr_pem), node_id=9, valid_seconds=60))
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert key.public_key() == certificate.public_key()
    assert ca.verify_node_certificate(certificate.public_bytes(serialization.Encoding.PEM)) == 9
    verifier(ca).build_client_verifier().verify(certificate, [])
    with pytest.raises(ValueError, match="is not in 0..2"):
        ca.sign_node_key(verified_csr_key(csr_pem), node_id=-1)


@pytest.mark.parametrize(
    ("node_id", "error"),
    [(-1, ValueError), (2**63, ValueError), (True, TypeError), ("7", TypeError)],
)
def test_node_id_must_be_a_non_negative_int(
    ca: CertificateAuthority, node_id: Any, error: type[Exception]
) -> None:
    with pytest.raises(error, match="Hint:"):
        ca.sign_node_csr(make_key_and_csr()[1], node_id=node_id)


# --- refusals -----------------------------------------------------------------------------------


def test_a_certificate_from_another_ca_is_refused(
    ca: CertificateAuthority, other_ca: CertificateAuthority
) -> None:
    foreign = other_ca.sign_node_csr(make_key_and_csr()[1], node_id=42)
    with pytest.raises(SecurityError, match="certificate was issued by another CA.*token create"):
        ca.verify_node_certificate(foreign)


def test_an_expired_certificate_is_refused(ca: CertificateAuthority) -> None:
    cert_pem = ca.sign_node_csr(make_key_and_csr()[1], node_id=42, valid_seconds=1)
    later = certificate_expiry(cert_pem) + timedelta(seconds=1)
    with pytest.raises(SecurityError, match=r"certificate expired at .*Z.*re-enrol with a new"):
        ca.verify_node_certificate(cert_pem, now=later)


def test_a_not_yet_valid_certificate_is_refused(ca: CertificateAuthority, node_cert: bytes) -> None:
    earlier = load(node_cert).not_valid_before_utc - timedelta(hours=1)
    with pytest.raises(SecurityError, match="not valid before .*clocks"):
        ca.verify_node_certificate(node_cert, now=earlier)


def test_the_hub_server_certificate_is_not_a_node_certificate(ca: CertificateAuthority) -> None:
    server_pem = ca.issue_server_certificate(["localhost"], [])[0]
    with pytest.raises(SecurityError, match="not a node certificate"):
        ca.verify_node_certificate(server_pem)
    with pytest.raises(SecurityError, match="'CN=localhost' is not a node's"):
        node_id_from_certificate(server_pem)


@pytest.mark.parametrize("garbage", [b"", b"not a certificate", b"-----BEGIN CERTIFICATE-----\n"])
def test_garbage_is_refused(ca: CertificateAuthority, garbage: bytes) -> None:
    with pytest.raises(SecurityError, match="not an X.509 certificate"):
        ca.verify_node_certificate(garbage)


def test_now_must_carry_a_time_zone(ca: CertificateAuthority, node_cert: bytes) -> None:
    with pytest.raises(ValueError, match="no time zone"):
        ca.verify_node_certificate(node_cert, now=datetime(2030, 1, 1))


# --- renewal ------------------------------------------------------------------------------------


def test_certificate_expiry_is_the_not_after_in_utc(node_cert: bytes) -> None:
    assert certificate_expiry(node_cert) == load(node_cert).not_valid_after_utc
    assert certificate_expiry(node_cert).tzinfo is not None


def test_renew_after_two_thirds_of_the_lifetime(node_cert: bytes) -> None:
    start, end = load(node_cert).not_valid_before_utc, load(node_cert).not_valid_after_utc
    assert not should_renew(node_cert, now=start + (end - start) / 2)
    assert should_renew(node_cert, now=start + (end - start) * 3 / 4)
    assert should_renew(node_cert, now=end + timedelta(days=1))
    assert should_renew(node_cert, now=start + (end - start) / 2, fraction=0.4)
    with pytest.raises(ValueError, match="fraction"):
        should_renew(node_cert, fraction=0)
