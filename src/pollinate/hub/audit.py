"""The audit: every control action at a hub, with who, what, when and the outcome.

Rows live in the ``audit`` table of ``hub.db`` (created by ``state.py``), oldest first;
``Audit.recent`` reads the newest. What is recorded: every action that changes something (a
run submitted or stopped, a token created, a user added, logged in or revoked, a node enrolled
or revoked), every read of a run's log (once per follow, not once per poll), and every
refusal by ``authorize``, of any action. Listings that succeed are not: they change nothing,
and dashboards poll them.

Text in a row may quote users and nodes (names, run ids, a refusal's reason), so it is
stored inert (``pollinate.text``): names up to ``MAX_NAME`` characters, the rest a line.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from pollinate.errors import StorageError
from pollinate.hub.access import Action, Caller, Forbidden, authorize
from pollinate.hub.state import HubState
from pollinate.text import MAX_LINE, MAX_NAME, inert

log = logging.getLogger("pollinate.hub")

OK = "ok"
"""The outcome of an action that was done; any other outcome says why it was not."""


@dataclass(frozen=True)
class AuditRow:
    """One control action: ``who`` (a user, or a token that enrolled a node) did ``action``
    (``access.Action``'s words, or what a token did) in ``project`` ('' when it spans
    projects) on ``target`` (a run id, user name, node id), at ``time`` (epoch seconds), with
    ``outcome`` (``OK``, or the refusal)."""

    seq: int
    time: float
    who: str
    action: str
    project: str
    target: str
    outcome: str


class Audit:
    """The hub's audit trail, in its state database."""

    def __init__(self, state: HubState) -> None:
        self.state = state

    def record(self, who: str, action: str, project: str, target: str, outcome: str) -> None:
        """Append a row. A disk that refuses it is logged, not raised: the action it records
        happened (or was refused) already."""
        row = (
            time.time(),
            inert(who, MAX_NAME),
            inert(action, MAX_NAME),
            inert(project, MAX_NAME),
            inert(target, MAX_NAME),
            inert(outcome, MAX_LINE),
        )
        try:
            with self.state.transaction() as db:
                db.execute(
                    "INSERT INTO audit (time, who, action, project, target, outcome) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    row,
                )
        except StorageError as exc:
            log.warning("could not record in the audit that %s %s %s: %s", *row[1:3], row[4], exc)

    def authorize(self, caller: Caller, action: Action, project: str | None, target: str) -> None:
        """``access.authorize``, a refusal recorded (with its first line) before it is raised."""
        try:
            authorize(caller, action, project)
        except Forbidden as exc:
            outcome = f"refused: {str(exc).splitlines()[0]}"
            self.record(caller.name, action, project or "", target, outcome)
            raise

    def recent(self, limit: int = 100) -> list[AuditRow]:
        """The newest ``limit`` rows, newest first."""
        with self.state.reading() as db:
            rows = db.execute("SELECT * FROM audit ORDER BY seq DESC LIMIT ?", (limit,)).fetchall()
        return [AuditRow(*row) for row in rows]
