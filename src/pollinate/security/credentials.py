"""A node's key and certificate, kept in its data dir between starts; a user's, kept in their
config directory (and the hub's admin credential in its data dir)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pollinate.security.ca_files import write_atomically
from pollinate.security.certificates import certificate_expiry
from pollinate.security.errors import SecurityError


@dataclass(frozen=True)
class NodeCredentials:
    """The node's private key, its certificate from the hub, and the hub's CA certificate."""

    key_pem: bytes
    cert_pem: bytes
    ca_pem: bytes
    enrol_pem: bytes = b""  # the hub's pinned enrolment certificate, to ask it for diagnoses

    @classmethod
    def load(cls, directory: Path) -> NodeCredentials | None:
        """The saved credentials, or None when the node has not enrolled yet."""
        files = [directory / name for name in ("node.key", "node.pem", "ca.pem")]
        if not all(f.exists() for f in files):
            return None
        key, cert, ca = (f.read_bytes() for f in files)
        enrol = directory / "enrol.pem"
        return cls(key, cert, ca, enrol.read_bytes() if enrol.exists() else b"")

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        for name, data, mode in (
            ("node.key", self.key_pem, 0o600),
            ("node.pem", self.cert_pem, 0o644),
            ("ca.pem", self.ca_pem, 0o644),
            ("enrol.pem", self.enrol_pem, 0o644),
        ):
            partial = directory / f"{name}.partial"
            partial.touch(mode=mode)
            partial.write_bytes(data)
            os.replace(partial, directory / name)

    def expired(self) -> bool:
        return certificate_expiry(self.cert_pem) <= datetime.now(UTC)

    def check_not_expired(self) -> None:
        """SecurityError that says what to do when the certificate has expired."""
        expiry = certificate_expiry(self.cert_pem)
        if expiry <= datetime.now(UTC):
            raise SecurityError(
                f"this node's certificate expired at {expiry:%Y-%m-%d %H:%M:%S} UTC; the hub "
                "will refuse it. Re-enrol: create a token on the hub (`pollinate token "
                "create`) and start the node with --token."
            )


@dataclass(frozen=True)
class UserCredentials:
    """A user's private key, their certificate from the hub, and the hub's CA certificate:
    what every control call presents. Kept owner-only: the directory 0700, each file 0600."""

    key_pem: bytes
    cert_pem: bytes
    ca_pem: bytes

    FILES = ("user.key", "user.pem", "ca.pem")

    @classmethod
    def load(cls, directory: Path) -> UserCredentials | None:
        """The saved credentials, or None when there are none (not logged in yet)."""
        files = [directory / name for name in cls.FILES]
        if not all(f.exists() for f in files):
            return None
        key, cert, ca = (f.read_bytes() for f in files)
        return cls(key, cert, ca)

    def save(self, directory: Path) -> None:
        """Write the three files atomically, readable by their owner only."""
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        directory.chmod(0o700)  # a directory made before, by hand, may let others in
        for name, data in zip(self.FILES, (self.key_pem, self.cert_pem, self.ca_pem), strict=True):
            write_atomically(directory / name, data, mode=0o600)
