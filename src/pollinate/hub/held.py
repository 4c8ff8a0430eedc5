"""Replies the hub holds for a run loop, and what gives their place back once the loop has them.

The transport decodes a reply while it holds a place in its decoding budget
(``transport.guards.ReplyBudget``); the place must stay taken while the decoded reply waits in
the hub for its run loop, or replies would pile up in memory behind a slow loop. So the
transport notes, under the reply's task id, how to give the place back (``hold``) before it
routes the reply, and ``HubGrid.dispatch`` lets go (``let_go``) once the loop asks for the next
reply (it has folded this one), or when its dispatch ends with replies never asked for.

Invariant: every place noted here is given back once, by ``let_go`` or by the transport's
``drop`` when the reply was not routed to a waiting dispatch (refused, or recorded for a round
that has not asked for it yet).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

Release = Callable[[], None]
"""Gives a reply's place back; callable from any thread, any number of times."""


class HeldReplies:
    """How to give back the place of each reply the hub holds for a run loop, by task id."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._releases: dict[str, list[Release]] = {}

    def hold(self, task_id: str, release: Release) -> None:
        """Note ``release`` for the reply to ``task_id`` about to be routed."""
        with self._lock:
            self._releases.setdefault(task_id, []).append(release)

    def drop(self, task_id: str, release: Release) -> None:
        """Forget ``release`` (its reply was not routed); the caller gives the place back."""
        with self._lock:
            releases = self._releases.get(task_id, [])
            if release in releases:
                releases.remove(release)
            if not releases:
                self._releases.pop(task_id, None)

    def let_go(self, task_ids: Iterable[str]) -> None:
        """The loop is done with these tasks' replies: give their places back."""
        with self._lock:
            releases = [r for task_id in task_ids for r in self._releases.pop(task_id, [])]
        for release in releases:
            release()

    def __len__(self) -> int:
        with self._lock:
            return sum(len(releases) for releases in self._releases.values())
