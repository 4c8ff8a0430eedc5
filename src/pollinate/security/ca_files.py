"""The CA's two files in the hub's data directory: ``ca.pem`` (the certificate, 0644) and
``ca.key`` (its private key, 0600).

Reading them fails with a ``SecurityError`` that says which file is wrong and how to fix it;
writing them is atomic, and the key is never readable by others, not even for a moment.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from pollinate.security.errors import SecurityError
from pollinate.security.keys import SigningKey

__all__ = [
    "CERT_FILE",
    "KEY_FILE",
    "others_can_access",
    "read_ca_certificate",
    "read_ca_key",
    "write_atomically",
]

CERT_FILE = "ca.pem"
KEY_FILE = "ca.key"


def read_ca_certificate(path: Path) -> x509.Certificate:
    """The CA certificate in ``path``; ``SecurityError`` if missing, corrupt or not a CA."""
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


def read_ca_key(path: Path) -> SigningKey:
    """The CA's private key in ``path``; ``SecurityError`` if missing, encrypted or corrupt."""
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


def others_can_access(path: Path) -> bool:
    """True if users other than the owner have any access to ``path`` (checked on POSIX only)."""
    return os.name == "posix" and bool(path.stat().st_mode & 0o077)


def write_atomically(path: Path, data: bytes, *, mode: int) -> None:
    """Write ``data`` to ``path`` with file mode ``mode``: all of it or, after a crash, nothing."""
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
