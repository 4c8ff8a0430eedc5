"""Who is looking at the dashboard: one-time login tokens, sessions and CSRF tokens.

``pollinate hub`` prints a login link (``/login?token=...``) made by ``login_token``; opening
it redeems the token (once) for a session, whose id the browser keeps in an HttpOnly,
SameSite=Strict cookie. Every page and event stream needs a session; a request that changes
something (stopping a run) also needs the session's CSRF token, sent in a header that only
the dashboard's own scripts can set.

A session carries the ``Caller`` it acts as (``hub.access``: a name, a role, projects), and
every read and action goes through the hub's own checks for that caller: a ``viewer`` reads
the runs of their projects, a ``member`` may also stop them, an ``admin`` does everything.
The printed link opens a session of ``LOCAL_ADMIN``, the hub's operator; when the hub's users
log in to the dashboard, their sessions are opened the same way (``Sessions.open``).

Invariants: a login token works once and only before it expires; the store holds only
hashes of tokens and session ids, so a copy of it logs nobody in; ids are compared by their
hashes' lookup, not character by character.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass

from pollinate.hub.access import LOCAL_ADMIN, Caller

LOGIN_TOKEN_SECONDS = 24 * 3600.0
"""How long a printed login link stays usable (once)."""
SESSION_SECONDS = 12 * 3600.0
"""How long a session lasts; then the dashboard asks for a new login link."""
MAX_SESSIONS = 1000
"""Sessions kept at once; the oldest go first (their browsers log in again)."""


@dataclass(frozen=True)
class Session:
    """One logged-in browser: the ``caller`` it acts as, the ``csrf`` token its scripts send
    with a change, and when it ends (``time.time()`` seconds)."""

    caller: Caller
    csrf: str
    expires: float

    def __repr__(self) -> str:  # the token stays out of logs
        return f"Session({self.caller}, expires={self.expires:.0f})"


class Sessions:
    """Login tokens and sessions, in memory (a restarted hub prints a new link); thread-safe."""

    def __init__(self) -> None:
        self._tokens: dict[str, tuple[Caller, float]] = {}
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def login_token(self, caller: Caller = LOCAL_ADMIN, ttl: float = LOGIN_TOKEN_SECONDS) -> str:
        """A token that opens one session as ``caller``, once, within ``ttl`` seconds."""
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._tokens[_digest(token)] = (caller, time.time() + ttl)
        return token

    def redeem(self, token: str) -> tuple[str, Session] | None:
        """``(session id, session)`` for a valid login token, which is spent; else None."""
        with self._lock:
            found = self._tokens.pop(_digest(token), None)
        if found is None or found[1] < time.time():
            return None
        return self.open(found[0])

    def open(self, caller: Caller) -> tuple[str, Session]:
        """A new session as ``caller``: ``(its id, for the cookie; the session)``."""
        session_id = secrets.token_urlsafe(32)
        session = Session(caller, secrets.token_urlsafe(32), time.time() + SESSION_SECONDS)
        with self._lock:
            while len(self._sessions) >= MAX_SESSIONS:
                del self._sessions[next(iter(self._sessions))]
            self._sessions[_digest(session_id)] = session
        return session_id, session

    def get(self, session_id: str) -> Session | None:
        """The live session with this id, or None."""
        key = _digest(session_id)
        with self._lock:
            session = self._sessions.get(key)
            if session is not None and session.expires < time.time():
                del self._sessions[key]
                return None
            return session

    def close(self, session_id: str) -> None:
        with self._lock:
            self._sessions.pop(_digest(session_id), None)


def csrf_matches(session: Session, sent: str) -> bool:
    return secrets.compare_digest(session.csrf.encode(), sent.encode())


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "replace")).hexdigest()
