"""The hub's users: who they are, their role and projects, and whether they were revoked.

Rows live in the ``users`` table of ``hub.db`` (created by ``state.py``), with a copy in
memory that every control call reads (one hub process owns its data dir, so the copy is the
truth): checking a caller costs no query.

Invariant: a revoked user stays revoked, and their name is never given to a new user, so a
certificate issued before the revocation (it names the user, and outlives it) can never come
back to life.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from pollinate.errors import PollinateError
from pollinate.hub.access import Caller, Role
from pollinate.hub.state import HubState
from pollinate.text import MAX_NAME, inert


@dataclass(frozen=True)
class UserRow:
    """A user as the hub records them; ``revoked_at`` None while they may call the hub."""

    name: str
    role: Role
    projects: frozenset[str]
    created: float
    created_by: str
    revoked_at: float | None
    revoked_by: str

    @property
    def caller(self) -> Caller:
        return Caller(self.name, self.role, self.projects)


class Users:
    """The users of one hub, in its state database."""

    def __init__(self, state: HubState) -> None:
        self.state = state
        self._lock = threading.Lock()
        with state.reading() as db:
            rows = db.execute("SELECT * FROM users").fetchall()
        self._rows = {row[0]: _user_row(row) for row in rows}

    def get(self, name: str) -> UserRow | None:
        with self._lock:
            return self._rows.get(name)

    def list(self) -> list[UserRow]:
        """Every user, revoked ones too, by name."""
        with self._lock:
            return sorted(self._rows.values(), key=lambda row: row.name)

    def add(self, name: str, role: Role, projects: Iterable[str], by: str) -> UserRow:
        """Record a new user; PollinateError if the name is taken (revoked names stay taken)."""
        row = UserRow(name, Role(role), frozenset(projects), time.time(), by, None, "")
        with self._lock:
            if (old := self._rows.get(name)) is not None:
                raise PollinateError(_taken(old))
            with self.state.transaction() as db:
                db.execute(
                    "INSERT INTO users (name, role, projects, created, created_by) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (name, row.role.value, json.dumps(sorted(row.projects)), row.created, by),
                )
            self._rows[name] = row
        return row

    def revoke(self, name: str, by: str) -> UserRow:
        """Revoke the user now (a revoked user stays revoked as first revoked);
        PollinateError if there is no such user."""
        with self._lock:
            row = self._rows.get(name)
            if row is None:
                raise PollinateError(
                    f"no user {name!r}: nothing was revoked.\nHint: `pollinate user ls` lists "
                    "the users"
                )
            if row.revoked_at is not None:
                return row
            at, by = time.time(), inert(by, MAX_NAME)
            with self.state.transaction() as db:
                db.execute(
                    "UPDATE users SET revoked_at = ?, revoked_by = ? WHERE name = ?",
                    (at, by, name),
                )
            row = self._rows[name] = replace(row, revoked_at=at, revoked_by=by)
            return row


def _taken(row: UserRow) -> str:
    if row.revoked_at is not None:
        return (
            f"the user name {row.name!r} belonged to a user who was revoked; a revoked name is "
            "never given again, so that their certificates stay refused.\nHint: choose "
            "another name"
        )
    return (
        f"there is a user {row.name!r} already ({row.role}).\nHint: choose another name, or "
        f"revoke {row.name} first (`pollinate user revoke {row.name}`)"
    )


def _user_row(row: tuple[Any, ...]) -> UserRow:
    name, role, projects, created, created_by, revoked_at, revoked_by = row
    return UserRow(
        name,
        Role(role),
        frozenset(json.loads(projects)),
        created,
        created_by,
        revoked_at,
        revoked_by,
    )
