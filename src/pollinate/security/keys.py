"""Keys and certificate signing requests: making a node's key, and refusing weak or forged ones.

A node makes its own EC P-256 key and sends the hub only a CSR, which proves that it holds the
key; the private key never leaves the node. The hub accepts a CSR only if its signature verifies
and its key is strong enough (RSA >= 2048 bits, EC >= 256 bits, Ed25519, Ed448).

>>> key_pem, csr_pem = make_key_and_csr()
>>> verified_csr_key(csr_pem).curve.name
'secp256r1'
"""

from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID

from pollinate.security.errors import SecurityError

__all__ = [
    "PublicKey",
    "SigningKey",
    "hash_for",
    "make_key_and_csr",
    "private_pem",
    "public_der",
    "strong_key",
    "verified_csr_key",
]

SigningKey = (
    ec.EllipticCurvePrivateKey
    | rsa.RSAPrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
)
PublicKey = (
    ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
)


def make_key_and_csr() -> tuple[bytes, bytes]:
    """For a node: (private key PEM, CSR PEM) with a new EC P-256 key. Keep the key on the node."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pollinate node")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return private_pem(key), csr.public_bytes(serialization.Encoding.PEM)


def verified_csr_key(csr_pem: bytes) -> PublicKey:
    """The public key of a CSR whose signature verifies; ``SecurityError`` if unreadable, forged
    or weak. The CSR's subject and requested extensions are ignored: the hub decides those."""
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
    return strong_key(public_key)


def strong_key(public_key: object) -> PublicKey:
    """``public_key`` if it is of a supported type and strong enough, else ``SecurityError``."""
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


def hash_for(key: SigningKey) -> hashes.SHA256 | None:
    """The hash to sign with ``key``: SHA-256, or None for the keys that bring their own."""
    # Ed25519 and Ed448 sign with their own built-in hash.
    is_edwards = isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey)
    return None if is_edwards else hashes.SHA256()


def public_der(public_key: object) -> bytes:
    """A public key as DER SubjectPublicKeyInfo, to compare keys; empty if not a key we know."""
    if not isinstance(public_key, PublicKey):
        return b""
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def private_pem(key: SigningKey) -> bytes:
    """A private key as unencrypted PKCS#8 PEM (it is protected by file permissions instead)."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
