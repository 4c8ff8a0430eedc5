"""One-time, expiring join tokens: how a new node earns its first certificate.

Trust model. ``pollinate token create`` prints ``pln1.<id>.<secret>.<ca-pin>``; the operator
hands it to one node over a channel they trust. The pin is the first 32 hex digits of the SHA-256
of the hub's CA certificate: before trusting the hub, the node checks the CA it is shown against
the pin (``ca_matches_pin``), so a man in the middle cannot pose as the hub. The node then sends
the token with its CSR, and the hub redeems the token before it signs. The hub stores only the
SHA-256 of the secret, so a copy of its database enrols no one.

Invariant: a token is redeemed at most once, even when several threads or processes redeem it at
the same moment: one conditional ``UPDATE`` decides, and only the caller whose update changed
the row succeeds.

>>> import sqlite3
>>> store = TokenStore(sqlite3.connect(":memory:"))
>>> token = store.create(ttl_seconds=600, ca_fingerprint="ab" * 32)
>>> store.redeem(token)
>>> parse_token(token).ca_pin == "ab" * 16
True
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pollinate.checks import positive
from pollinate.security.certificates import certificate_fingerprint
from pollinate.security.errors import SecurityError

__all__ = ["JoinToken", "TokenStore", "ca_matches_pin", "parse_token"]

PREFIX = "pln1"
PIN_HEX_DIGITS = 32
_ID_BYTES, _SECRET_BYTES = 9, 32  # 12 and 43 URL-safe base64 characters
_TOKEN = re.compile(r"pln1\.([A-Za-z0-9_-]{12})\.([A-Za-z0-9_-]{43})\.([0-9a-f]{32})")
_FINGERPRINT = re.compile(r"[0-9a-f]{64}")
_PIN = re.compile(r"[0-9a-f]{32,64}")
_CREATE_HINT = "create a new one with `pollinate token create`"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS join_tokens (
    id             TEXT PRIMARY KEY,
    secret_sha256  TEXT NOT NULL,
    ca_fingerprint TEXT NOT NULL,
    created_at     REAL NOT NULL,
    expires_at     REAL NOT NULL,
    spent          INTEGER NOT NULL DEFAULT 0,
    spent_at       REAL
)
"""

_REDEEM = """
UPDATE join_tokens SET spent = 1, spent_at = ?
WHERE id = ? AND secret_sha256 = ? AND spent = 0 AND expires_at > ?
"""


@dataclass(frozen=True)
class JoinToken:
    """A parsed join token. Its ``repr`` leaves the secret out, so logging one leaks nothing."""

    id: str
    secret: str = field(repr=False)
    ca_pin: str


class TokenStore:
    """Join tokens in the hub's SQLite database (table ``join_tokens``, created if missing).

    Thread safety: a lock serialises this store's own use of the connection and every write is
    one ``with connection:`` transaction, so one store (and one connection opened with
    ``check_same_thread=False``) can serve many threads. Code outside this class that uses the
    same connection at the same time must serialise with it; the simplest is one connection per
    thread or process on the same database file, which SQLite itself keeps consistent.
    """

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection
        self._lock = threading.Lock()
        with self._lock, connection:
            connection.execute(_SCHEMA)

    def create(
        self, ttl_seconds: float = 3600, *, ca_fingerprint: str, now: float | None = None
    ) -> str:
        """A new token, valid for ``ttl_seconds`` from ``now`` (default: the current time).

        ``ca_fingerprint`` is ``CertificateAuthority.fingerprint``; its first 32 hex digits go
        into the token as the CA pin. The returned string is the only copy of the secret.
        """
        _check_ttl(ttl_seconds)
        _check_fingerprint(ca_fingerprint)
        created = time.time() if now is None else now
        token_id = secrets.token_urlsafe(_ID_BYTES)
        secret = secrets.token_urlsafe(_SECRET_BYTES)
        row = (token_id, _digest(secret), ca_fingerprint, created, created + ttl_seconds)
        with self._lock, self._connection:
            self._connection.execute(
                "INSERT INTO join_tokens (id, secret_sha256, ca_fingerprint, created_at, "
                "expires_at) VALUES (?, ?, ?, ?, ?)",
                row,
            )
        return f"{PREFIX}.{token_id}.{secret}.{ca_fingerprint[:PIN_HEX_DIGITS]}"

    def redeem(self, token: str, now: float | None = None) -> None:
        """Spend ``token`` at ``now`` (default: the current time), or raise ``SecurityError``.

        Refused: a malformed token, one this hub never issued, an expired one, a spent one.
        """
        parsed = parse_token(token)
        at = time.time() if now is None else now
        with self._lock, self._connection:
            cursor = self._connection.execute(_REDEEM, (at, parsed.id, _digest(parsed.secret), at))
            if cursor.rowcount == 1:
                return
        raise self._refusal(parsed)

    def _refusal(self, token: JoinToken) -> SecurityError:
        # Only explains a refusal the UPDATE already made; it decides nothing.
        with self._lock:
            row = self._connection.execute(
                "SELECT secret_sha256, expires_at, spent, spent_at FROM join_tokens WHERE id = ?",
                (token.id,),
            ).fetchone()
        if row is None or not hmac.compare_digest(row[0], _digest(token.secret)):
            return SecurityError(
                f"unknown join token {token.id!r}: this hub did not issue it (another hub's "
                f"token, or mistyped); {_CREATE_HINT}"
            )
        if row[2]:
            return SecurityError(
                f"this join token was already used (at {_iso(row[3])}); a token enrols one node "
                f"only; {_CREATE_HINT}"
            )
        return SecurityError(f"join token {token.id!r} expired at {_iso(row[1])}; {_CREATE_HINT}")


def parse_token(token: str) -> JoinToken:
    """The parts of ``pln1.<id>.<secret>.<ca-pin>``; ``SecurityError`` if it is malformed.

    Surrounding whitespace is ignored. The error never repeats the token (it holds a secret).
    """
    if not isinstance(token, str):
        raise TypeError(
            f"a join token is a str, got {type(token).__name__}.\n"
            "Hint: parse_token('pln1.<id>.<secret>.<ca-pin>')"
        )
    match = _TOKEN.fullmatch(token.strip())
    if match is None:
        raise SecurityError(
            f"malformed join token ({_what_is_wrong(token.strip())}): a join token looks like "
            "pln1.<id>.<secret>.<ca-pin>; copy the whole line `pollinate token create` printed"
        )
    return JoinToken(id=match[1], secret=match[2], ca_pin=match[3])


def ca_matches_pin(ca_pem: bytes, pin: str) -> bool:
    """Whether the CA certificate's SHA-256 starts with ``pin`` (32 to 64 hex digits).

    A node calls this on the CA the hub shows it, with the pin from its join token, before it
    trusts the hub. Unreadable certificates and malformed pins never match.
    """
    if not isinstance(pin, str) or _PIN.fullmatch(pin.lower()) is None:
        return False
    try:
        fingerprint = certificate_fingerprint(ca_pem)
    except (SecurityError, TypeError):
        return False
    return hmac.compare_digest(fingerprint[: len(pin)], pin.lower())


def _what_is_wrong(token: str) -> str:
    parts = token.split(".")
    if parts[0] != PREFIX:
        return f"it does not start with {PREFIX}."
    if len(parts) != 4:
        return f"it has {len(parts)} dot-separated parts, not 4"
    names = ("id", "secret", "CA pin")
    patterns = (r"[A-Za-z0-9_-]{12}", r"[A-Za-z0-9_-]{43}", r"[0-9a-f]{32}")
    bad = [
        n
        for n, p, part in zip(names, patterns, parts[1:], strict=True)
        if not re.fullmatch(p, part)
    ]
    return f"its {' and '.join(bad)} part is cut short or has wrong characters"


# SHA-256 without salt or stretching is enough: the secret is 256 random bits, not a password.
def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _check_ttl(ttl_seconds: float) -> None:
    hint = "store.create(ttl_seconds=3600, ca_fingerprint=ca.fingerprint)"
    positive("ttl_seconds", ttl_seconds, hint=hint)


def _check_fingerprint(ca_fingerprint: str) -> None:
    if not isinstance(ca_fingerprint, str) or _FINGERPRINT.fullmatch(ca_fingerprint) is None:
        raise ValueError(
            f"ca_fingerprint={ca_fingerprint!r} is not a SHA-256 fingerprint (64 lowercase hex "
            "digits).\nHint: store.create(ca_fingerprint=ca.fingerprint)"
        )


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
