"""Expiring tokens: how a new node earns its first certificate, and a user theirs.

Trust model. ``pollinate token create`` prints ``pln1.<id>.<secret>.<ca-pin>``; the operator
hands it to one node over a channel they trust. The pin is the first 32 hex digits of the SHA-256
of the hub's CA certificate: before trusting the hub, the node checks the CA it is shown against
the pin (``ca_matches_pin``), so a man in the middle cannot pose as the hub. The node then sends
the token with its CSR, and the hub redeems the token before it signs. The hub stores only the
SHA-256 of the secret, so a copy of its database enrols no one.

Kinds and scope. A token has a ``TokenKind``: a ``join`` token enrols nodes into the projects
of its scope, and may serve ``uses`` nodes (an automated deployment); a ``user`` token logs in
the one user its scope names, once. A token is redeemed only as its kind: a user token enrols
no node, and a join token logs no one in.

Invariant: a token is redeemed at most ``uses`` times (once, by default), even when several
threads or processes redeem it at the same moment: one conditional ``UPDATE`` decides, and only
the callers whose update changed the row succeed.

>>> import sqlite3
>>> store = TokenStore(sqlite3.connect(":memory:"))
>>> token = store.create(ttl_seconds=600, ca_fingerprint="ab" * 32, scope=("cardiology",))
>>> store.redeem(token).scope
('cardiology',)
>>> parse_token(token).ca_pin == "ab" * 16
True
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

from pollinate.checks import integer, positive
from pollinate.security.certificates import certificate_fingerprint
from pollinate.security.errors import SecurityError

__all__ = ["Grant", "JoinToken", "TokenKind", "TokenStore", "ca_matches_pin", "parse_token"]

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
    spent_at       REAL,
    kind           TEXT NOT NULL DEFAULT 'join',
    uses           INTEGER NOT NULL DEFAULT 1,
    used           INTEGER NOT NULL DEFAULT 0,
    scope          TEXT NOT NULL DEFAULT '["default"]'
)
"""

# columns added since the first hubs (ALTER TABLE on an older data dir): tokens made before
# them enrol one node into the default project, as they did
_ADDED_COLUMNS = {
    "kind": "TEXT NOT NULL DEFAULT 'join'",
    "uses": "INTEGER NOT NULL DEFAULT 1",
    "used": "INTEGER NOT NULL DEFAULT 0",
    "scope": """TEXT NOT NULL DEFAULT '["default"]'""",
}

_REDEEM = """
UPDATE join_tokens SET used = used + 1, spent = (used + 1 >= uses), spent_at = ?
WHERE id = ? AND secret_sha256 = ? AND spent = 0 AND expires_at > ? AND kind = ?
RETURNING scope
"""


class TokenKind(StrEnum):
    """What a token is for; stored as its value."""

    JOIN = "join"  # enrols nodes into the projects of its scope
    USER = "user"  # logs in the user its scope names


@dataclass(frozen=True)
class Grant:
    """What redeeming a token gave: its kind and scope (a join token's projects, or the one
    name of a user token's user)."""

    kind: TokenKind
    scope: tuple[str, ...]


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
            present = {row[1] for row in connection.execute("PRAGMA table_info(join_tokens)")}
            for column, declaration in _ADDED_COLUMNS.items():
                if column not in present:
                    _add_column(connection, column, declaration)

    def create(
        self,
        ttl_seconds: float = 3600,
        *,
        ca_fingerprint: str,
        kind: TokenKind = TokenKind.JOIN,
        scope: tuple[str, ...] = ("default",),
        uses: int = 1,
        now: float | None = None,
    ) -> str:
        """A new token, valid for ``ttl_seconds`` from ``now`` (default: the current time).

        ``ca_fingerprint`` is ``CertificateAuthority.fingerprint``; its first 32 hex digits go
        into the token as the CA pin. ``scope`` is what redeeming it grants (a join token's
        projects, a user token's one user name); ``uses`` how many times it may be redeemed
        (a user token: once). The returned string is the only copy of the secret.
        """
        _check_ttl(ttl_seconds)
        _check_fingerprint(ca_fingerprint)
        kind = TokenKind(kind)
        _check_scope(kind, scope)
        uses = integer("uses", uses, minimum=1, hint="store.create(..., uses=10)")
        if kind is TokenKind.USER and uses != 1:
            raise ValueError(
                f"uses={uses!r}: a user token logs its user in once.\n"
                "Hint: store.create(..., kind=TokenKind.USER, scope=('alice',))"
            )
        created = time.time() if now is None else now
        token_id = secrets.token_urlsafe(_ID_BYTES)
        secret = secrets.token_urlsafe(_SECRET_BYTES)
        row = (
            token_id,
            _digest(secret),
            ca_fingerprint,
            created,
            created + ttl_seconds,
            kind.value,
            uses,
            json.dumps(list(scope)),
        )
        with self._lock, self._connection:
            self._connection.execute(
                "INSERT INTO join_tokens (id, secret_sha256, ca_fingerprint, created_at, "
                "expires_at, kind, uses, scope) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                row,
            )
        return f"{PREFIX}.{token_id}.{secret}.{ca_fingerprint[:PIN_HEX_DIGITS]}"

    def redeem(
        self, token: str, kind: TokenKind = TokenKind.JOIN, now: float | None = None
    ) -> Grant:
        """Spend one use of ``token`` as a token of ``kind`` at ``now`` (default: the current
        time) and return what it grants, or raise ``SecurityError``.

        Refused: a malformed token, one this hub never issued, one of another kind, an expired
        one, a spent one. A refusal spends nothing.
        """
        parsed = parse_token(token)
        kind = TokenKind(kind)
        at = time.time() if now is None else now
        secret = _digest(parsed.secret)
        with self._lock, self._connection:
            cursor = self._connection.execute(_REDEEM, (at, parsed.id, secret, at, kind.value))
            row = cursor.fetchone()
        if row is not None:
            return Grant(kind, tuple(json.loads(row[0])))
        raise self._refusal(parsed, kind)

    def _refusal(self, token: JoinToken, kind: TokenKind) -> SecurityError:
        # Only explains a refusal the UPDATE already made; it decides nothing.
        with self._lock:
            row = self._connection.execute(
                "SELECT secret_sha256, expires_at, spent, spent_at, kind, uses FROM join_tokens "
                "WHERE id = ?",
                (token.id,),
            ).fetchone()
        if row is None or not hmac.compare_digest(row[0], _digest(token.secret)):
            return SecurityError(
                f"unknown {kind} token {token.id!r}: this hub did not issue it (another hub's "
                f"token, or mistyped); {_hint(kind)}"
            )
        if row[4] != kind.value:
            return SecurityError(
                f"token {token.id!r} is a {row[4]} token, not a {kind} token: {_USE[row[4]]}"
            )
        if row[2]:
            limit = "one node only" if row[5] == 1 else f"{row[5]} nodes, and it did"
            if kind is TokenKind.USER:
                limit = "one login only"
            return SecurityError(
                f"this {kind} token was already used (at {_iso(row[3])}); it serves {limit}; "
                f"{_hint(kind)}"
            )
        return SecurityError(f"{kind} token {token.id!r} expired at {_iso(row[1])}; {_hint(kind)}")


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


_USE = {
    TokenKind.JOIN.value: "it enrols a node (`pollinate node --token TOKEN`)",
    TokenKind.USER.value: "it logs a user in (`pollinate login --hub HOST:PORT --token TOKEN`)",
}


def _hint(kind: TokenKind) -> str:
    if kind is TokenKind.USER:
        return "ask an admin for a new one (`pollinate user token NAME`)"
    return _CREATE_HINT


def _check_scope(kind: TokenKind, scope: tuple[str, ...]) -> None:
    example = "store.create(..., scope=('cardiology',))"
    if isinstance(scope, str) or not all(isinstance(item, str) for item in scope):
        raise TypeError(f"scope={scope!r} is not a tuple of names.\nHint: {example}")
    if not scope or (kind is TokenKind.USER and len(scope) != 1):
        wanted = "one user name" if kind is TokenKind.USER else "at least one project"
        raise ValueError(f"scope={scope!r}: a {kind} token's scope is {wanted}.\nHint: {example}")


def _add_column(connection: sqlite3.Connection, column: str, declaration: str) -> None:
    try:
        connection.execute(f"ALTER TABLE join_tokens ADD COLUMN {column} {declaration}")
    except sqlite3.OperationalError as exc:
        if "duplicate column" not in str(exc):  # another process added it a moment ago
            raise


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
