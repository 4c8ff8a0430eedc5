"""The hub's TLS material, kept in its data dir: the CA, the server certificate, the pinned
enrolment identity, and the join tokens."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from pollinate.hub.access import DEFAULT_PROJECT
from pollinate.security import CertificateAuthority, TokenStore
from pollinate.security.enrolment import enrolment_pin, load_or_create_enrolment_identity
from pollinate.security.tokens import TokenKind


@dataclass
class HubCredentials:
    """What the hub needs to serve mutual TLS and to enrol nodes."""

    ca: CertificateAuthority
    server_cert: bytes
    server_key: bytes
    enrol_cert: bytes
    enrol_key: bytes
    tokens: TokenStore
    cert_lifetime: int

    @classmethod
    def load_or_create(
        cls, data_dir: Path, hostnames: list[str], ips: list[str], cert_lifetime: int = 86400
    ) -> HubCredentials:
        """Load the CA (or create it on first start) and issue this start's server certificate."""
        ca = CertificateAuthority.load_or_create(data_dir / "ca")
        server_cert, server_key = ca.issue_server_certificate(hostnames, ips)
        enrol_cert, enrol_key = load_or_create_enrolment_identity(data_dir / "enrol")
        connection = sqlite3.connect(data_dir / "hub.db", check_same_thread=False)
        return cls(
            ca,
            server_cert,
            server_key,
            enrol_cert,
            enrol_key,
            TokenStore(connection),
            cert_lifetime,
        )

    def create_token(
        self, ttl_seconds: float, projects: tuple[str, ...] = (DEFAULT_PROJECT,), uses: int = 1
    ) -> tuple[str, float]:
        """A join token that enrols ``uses`` nodes into ``projects``, and when it expires
        (epoch seconds)."""
        token = self.tokens.create(
            ttl_seconds, ca_fingerprint=enrolment_pin(self.enrol_cert), scope=projects, uses=uses
        )
        return token, time.time() + ttl_seconds

    def create_user_token(self, name: str, ttl_seconds: float) -> tuple[str, float]:
        """A one-time token that logs the user ``name`` in, and when it expires. It pins the
        enrolment identity, as a join token does: a user logs in where a node enrols."""
        token = self.tokens.create(
            ttl_seconds,
            ca_fingerprint=enrolment_pin(self.enrol_cert),
            kind=TokenKind.USER,
            scope=(name,),
        )
        return token, time.time() + ttl_seconds

    def renew(self, node_id: int, csr_pem: bytes) -> bytes:
        return self.ca.sign_node_csr(csr_pem, node_id, self.cert_lifetime)
