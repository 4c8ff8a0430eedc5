"""HubGrid: the run loop's Grid over the hub's fleet of real nodes.

Every instruction is noted in the journal before it is queued, and every reply is recorded
there before its node hears "accepted" (``Hub.accept_reply``), so a round interrupted by a
crash of the hub is resumed with the replies it already had.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

from pollinate.errors import RunError, StorageError
from pollinate.hub.fleet import Fleet, Task
from pollinate.hub.journal import Journal
from pollinate.records import Config, Message
from pollinate.server.grid import Grid

log = logging.getLogger("pollinate.hub")

T = TypeVar("T")

STORAGE_RETRY_SECONDS = 2.0


class RunStopped(RunError):
    """The run was stopped by a user."""


class HubGrid(Grid):
    """Dispatches one run's instructions to its nodes and yields their replies as they come."""

    def __init__(
        self, fleet: Fleet, journal: Journal, run_id: str, app_hash: str, run_config: Config
    ) -> None:
        self.fleet = fleet
        self.journal = journal
        self.run_id = run_id
        self.app_hash = app_hash
        self.run_config = run_config
        self.stopped = threading.Event()
        self.storage_problem = ""
        """Why the run waits for its data dir (empty while writes succeed)."""

    def nodes(self) -> list[int]:
        return self.fleet.alive()

    def dispatch(self, instructions: Sequence[Message], timeout: float | None) -> Iterator[Message]:
        replies: queue.Queue[Message] = queue.Queue()
        task_ids = [m.task_id for m in instructions]
        known = self.until_stored(lambda: self.journal.open(instructions))
        for message in instructions:
            recorded = known.get(message.task_id, False)
            if isinstance(recorded, Message):
                replies.put(recorded)  # answered before the hub restarted
                continue
            # a task known from before a restart may be in its node's hands already
            self.fleet.enqueue(
                Task(message, self.app_hash, self.run_config, replies, sent=recorded is None)
            )
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            for _ in instructions:
                reply = self._next(replies, deadline)
                if reply is None:
                    return
                yield reply
        finally:
            self.fleet.cancel(task_ids)
            with contextlib.suppress(StorageError):  # the next checkpoint forgets them anyway
                self.journal.close_unanswered(task_ids)

    def until_stored(self, action: Callable[[], T]) -> T:
        """``action()``, retried while the data dir refuses writes: a full or read-only disk
        pauses the run, with one error in its log, instead of failing it."""
        while True:
            try:
                result = action()
            except StorageError as exc:
                if not self.storage_problem:
                    log.error("run %s paused: %s", self.run_id, exc, extra={"run_id": self.run_id})
                self.storage_problem = str(exc)
                if self.stopped.wait(STORAGE_RETRY_SECONDS):
                    raise RunStopped("the run was stopped") from None
                continue
            self._storage_ok()
            return result

    def _note_unrecorded(self) -> None:
        """A round whose replies the hub cannot record waits for the disk, not for its
        nodes (they push again later): the run is paused, as when a checkpoint fails."""
        problem = self.journal.unrecorded(self.run_id)
        if problem:
            if not self.storage_problem:
                log.error("run %s paused: %s", self.run_id, problem, extra={"run_id": self.run_id})
            self.storage_problem = problem
        else:
            self._storage_ok()

    def _storage_ok(self) -> None:
        if self.storage_problem:
            self.storage_problem = ""
            log.warning("run %s goes on: its data dir takes writes again", self.run_id)

    def _next(self, replies: queue.Queue[Message], deadline: float | None) -> Message | None:
        while True:
            if self.stopped.is_set():
                raise RunStopped("the run was stopped")
            self._note_unrecorded()
            wait = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
            if wait <= 0:
                return None
            try:
                return replies.get(timeout=wait)
            except queue.Empty:
                continue
