"""The fields of the certificates the hub's CA issues: names, validity, key usage, key
identifiers and subject alternative names.

Every certificate starts ``CLOCK_SKEW`` before it is issued and carries whole-second times, a
random serial number and a subject key identifier.
"""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.x509.oid import NameOID

from pollinate.security.errors import SecurityError
from pollinate.security.keys import PublicKey

__all__ = [
    "CLOCK_SKEW",
    "authority_key_id",
    "builder",
    "key_usage",
    "subject_alt_names",
    "utc_now",
    "x509_name",
]

# Certificates start this long before they are issued, so that a node whose clock runs a little
# behind the hub's can use its certificate at once.
CLOCK_SKEW = timedelta(minutes=5)


def builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: PublicKey,
    not_before: datetime,
    not_after: datetime,
) -> x509.CertificateBuilder:
    """A certificate on ``public_key`` with a random serial and a subject key identifier."""
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


def x509_name(common_name: str) -> x509.Name:
    """The X.509 name ``CN=<common_name>``."""
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def key_usage(*, signs_certificates: bool) -> x509.KeyUsage:
    """Key usage for a CA (signs certificates and CRLs) or a leaf (digital signatures only)."""
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


def authority_key_id(ca_certificate: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    """The authority key identifier that points a leaf at ``ca_certificate``."""
    try:
        ski = ca_certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    except x509.ExtensionNotFound:
        public_key = ca_certificate.public_key()
        if not isinstance(public_key, PublicKey):
            raise SecurityError("the CA certificate's key type cannot sign certificates") from None
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key)
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski.value)


def subject_alt_names(hostnames: list[str], ips: list[str]) -> list[x509.GeneralName]:
    """A server's DNS names and IP addresses as SANs; ``TypeError``/``ValueError`` on misuse."""
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


def utc_now() -> datetime:
    """The current time in UTC, to the second."""
    # X.509 times have whole seconds.
    return datetime.now(UTC).replace(microsecond=0)
