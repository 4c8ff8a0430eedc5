"""Security: the hub's CA, node enrolment with one-time join tokens, certificate renewal.

The hub issues every certificate itself (``ca.py``); a node earns its first one by redeeming a
join token that also pins the hub's CA (``tokens.py``). From then on hub and node speak mutual
TLS, and a node's id is the one its certificate names. Users earn theirs the same way, with a
user token, and carry ``CN=user:<name>``, which never reads as a node's.
"""

from pollinate.security.ca import CertificateAuthority
from pollinate.security.certificates import (
    certificate_expiry,
    certificate_fingerprint,
    node_id_from_certificate,
    should_renew,
    verify_peer_certificate,
)
from pollinate.security.credentials import NodeCredentials, UserCredentials
from pollinate.security.errors import SecurityError
from pollinate.security.keys import make_key_and_csr
from pollinate.security.tokens import (
    Grant,
    JoinToken,
    TokenKind,
    TokenStore,
    ca_matches_pin,
    parse_token,
)

__all__ = [
    "CertificateAuthority",
    "Grant",
    "JoinToken",
    "NodeCredentials",
    "SecurityError",
    "TokenKind",
    "TokenStore",
    "UserCredentials",
    "ca_matches_pin",
    "certificate_expiry",
    "certificate_fingerprint",
    "make_key_and_csr",
    "node_id_from_certificate",
    "parse_token",
    "should_renew",
    "verify_peer_certificate",
]
