"""Who may do what at a hub: roles, callers, and the one function that decides.

Users hold a role in some projects; runs and nodes belong to projects. ``authorize(caller,
action, project)`` is the only place a control call's permission is decided, and its refusal
(``Forbidden``) says which role or project the call needed.

Invariants:

- an admin may do everything, in every project; a member may submit, stop and read the runs
  of their projects; a viewer may read them. Nothing else is allowed: an action missing from
  ``ALLOWED`` is allowed to no one;
- users, tokens, nodes and the audit are the admins' (they span projects).

>>> alice = Caller("alice", Role.VIEWER, frozenset({"cardiology"}))
>>> authorize(alice, Action.READ, "cardiology")
>>> authorize(alice, Action.STOP, "cardiology")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
pollinate.hub.access.Forbidden: user alice (viewer in cardiology) cannot stop runs: that ...
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from pollinate.errors import PollinateError

__all__ = [
    "ADMIN_USER",
    "DEFAULT_PROJECT",
    "LOCAL_ADMIN",
    "Action",
    "Caller",
    "Forbidden",
    "NodeCaller",
    "Role",
    "authorize",
    "check_name",
    "check_projects",
]

DEFAULT_PROJECT = "default"
"""The project of runs and nodes that name none (and of everything an older hub recorded)."""

ADMIN_USER = "admin"
"""The user whose credential the hub writes into its data dir at its first start."""

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class Forbidden(PollinateError):
    """A caller's role or projects do not allow what it asked; the message says what would."""


class Role(StrEnum):
    """A user's role in their projects. Stored (``hub.db``) and sent as its value."""

    ADMIN = "admin"  # everything, every project: users, tokens, nodes, revocation, audit
    MEMBER = "member"  # submit, stop and read the runs of their projects
    VIEWER = "viewer"  # read the runs of their projects


class Action(StrEnum):
    """What a control call does, as ``authorize`` and the audit name it."""

    SUBMIT = "submit runs"
    STOP = "stop runs"
    READ = "read runs"  # list them, follow their logs
    MANAGE_TOKENS = "manage join tokens"
    MANAGE_USERS = "manage users"
    REVOKE_NODES = "revoke nodes"
    MANAGE_NODES = "manage nodes"  # label and cordon them
    READ_AUDIT = "read the audit"


ALLOWED: dict[Action, frozenset[Role]] = {
    Action.SUBMIT: frozenset({Role.ADMIN, Role.MEMBER}),
    Action.STOP: frozenset({Role.ADMIN, Role.MEMBER}),
    Action.READ: frozenset({Role.ADMIN, Role.MEMBER, Role.VIEWER}),
    Action.MANAGE_TOKENS: frozenset({Role.ADMIN}),
    Action.MANAGE_USERS: frozenset({Role.ADMIN}),
    Action.REVOKE_NODES: frozenset({Role.ADMIN}),
    Action.MANAGE_NODES: frozenset({Role.ADMIN}),
    Action.READ_AUDIT: frozenset({Role.ADMIN}),
}
"""The roles that may take each action (in the action's project, but admins in any)."""


@dataclass(frozen=True)
class Caller:
    """Who makes a control call: a user, with a role in ``projects`` (an admin's role holds
    in every project, whatever ``projects`` says)."""

    name: str
    role: Role
    projects: frozenset[str]

    def __str__(self) -> str:
        where = "all projects" if self.role is Role.ADMIN else ", ".join(sorted(self.projects))
        return f"user {self.name} ({self.role} in {where or 'no project'})"

    def may_read(self, project: str) -> bool:
        """Whether the caller may see runs of ``project`` (listings show only those)."""
        return _allowed(self, Action.READ, project)


LOCAL_ADMIN = Caller("local admin", Role.ADMIN, frozenset())
"""The caller of a hub without user certificates (``--insecure``) and of in-process calls."""


def authorize(caller: Caller, action: Action, project: str | None = None) -> None:
    """Return if ``caller`` may take ``action`` in ``project``; ``Forbidden`` saying what it
    needs otherwise. ``project`` is None for actions that span projects (users, tokens,
    nodes, audit), which only admins take."""
    if _allowed(caller, action, project):
        return
    allowed = [role.value for role in reversed(Role) if role in ALLOWED[action]]
    roles = " or ".join([", ".join(allowed[:-1]), allowed[-1]] if len(allowed) > 1 else allowed)
    where = "" if project is None else f" in project {project}"
    raise Forbidden(
        f"{caller} cannot {action}: that needs role {roles}{where}.\nHint: an admin grants "
        "roles and projects (`pollinate user add NAME --role ROLE --project PROJECT`)"
    )


def _allowed(caller: Caller, action: Action, project: str | None) -> bool:
    if caller.role not in ALLOWED[action]:
        return False
    return caller.role is Role.ADMIN or (project is not None and project in caller.projects)


def check_name(what: str, name: str, example: str) -> str:
    """``name`` if it is a valid user or project name, else TypeError/ValueError with a Hint.

    A name is 1 to 64 letters, digits, dots, dashes and underscores, starting with a letter
    or digit: it goes into certificates, listings and log lines as it is.
    """
    if not isinstance(name, str):
        raise TypeError(f"{what} must be a str, got {name!r}.\nHint: {example}")
    if _NAME.fullmatch(name) is None:
        raise ValueError(
            f"{what} {name!r} is not a valid name: 1 to 64 letters, digits, '.', '-' or '_', "
            f"starting with a letter or digit.\nHint: {example}"
        )
    return name


def check_projects(projects: Iterable[str], example: str) -> frozenset[str]:
    """The projects as a set, each checked by ``check_name``; at least one."""
    if isinstance(projects, str):
        raise TypeError(
            f"projects must be a list of names, not the str {projects!r}.\nHint: {example}"
        )
    checked = frozenset(check_name("project", project, example) for project in projects)
    if not checked:
        raise ValueError(f"projects is empty: name at least one project.\nHint: {example}")
    return checked


@dataclass(frozen=True)
class NodeCaller:
    """A node calling the fleet API: its id, and the projects whose runs it serves."""

    node_id: int
    projects: frozenset[str]
