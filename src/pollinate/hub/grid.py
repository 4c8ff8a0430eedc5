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
from pollinate.hub.fleet import Fleet, QueuedTask
from pollinate.hub.journal import Journal
from pollinate.loop.grid import Grid, Timeout, ends_at
from pollinate.placement import Placement
from pollinate.records import Config, Message

log = logging.getLogger("pollinate.hub")

T = TypeVar("T")

STORAGE_RETRY_SECONDS = 2.0


class RunStopped(RunError):
    """The run was stopped by a user."""


class HubGrid(Grid):
    """Dispatches one run's instructions to its nodes and yields their replies as they come."""

    def __init__(
        self,
        fleet: Fleet,
        journal: Journal,
        run_id: str,
        app_hash: str,
        run_config: Config,
        placement: Placement | None = None,
    ) -> None:
        self.fleet = fleet
        self.placement = placement or Placement()
        self.journal = journal
        self.run_id = run_id
        self.app_hash = app_hash
        self.run_config = run_config
        self.stopped = threading.Event()
        self._waiting: set[str] = set()  # ids of the tasks dispatch calls wait for now
        self._lock = threading.Lock()
        self.storage_problem = ""
        """Why the run waits for its data dir (empty while writes succeed)."""

    def nodes(self) -> list[int]:
        """The alive nodes that may serve this run (its project's: ``Fleet.alive_for``), are
        not cordoned and match its selector now, as its placement picks them (none until
        ``min_nodes`` match, at most ``max_nodes``): the loop asks every round, so placement
        follows the fleet's latest labels and resources (a node relabelled to match joins at
        the next round; a node cordoned is not asked again)."""
        alive = self.fleet.alive_for(self.run_id)
        return self.placement.pick(self.fleet.placeable(alive, self.placement.selector))

    def wait_for_nodes(self, count: int, timeout: float) -> list[int]:
        """``Grid.wait_for_nodes``, saying in the run's log when the wait is for the run's
        ``min_nodes`` rather than for the strategy's count."""
        placement = self.placement
        if placement.min_nodes > count:
            matching = self.fleet.placeable(self.fleet.alive_for(self.run_id), placement.selector)
            if len(matching) < placement.min_nodes:
                log.warning(
                    "run %s waits for %d nodes (min_nodes), %d match its placement now",
                    self.run_id,
                    placement.min_nodes,
                    len(matching),
                    extra={"run_id": self.run_id},
                )
        return list(super().wait_for_nodes(count, timeout))

    def dispatch(self, instructions: Sequence[Message], timeout: Timeout) -> Iterator[Message]:
        replies: queue.Queue[Message] = queue.Queue()
        task_ids = [m.task_id for m in instructions]
        with self._lock:
            if self.stopped.is_set():  # closed: a task queued now would wait for nobody
                raise RunStopped("the run was stopped")
            self._waiting.update(task_ids)
        self.until_stored(lambda: self._open(instructions, replies))
        ends = ends_at(timeout)
        paused = [0.0]  # seconds the run waited for its data dir: not the nodes' time
        try:
            for _ in instructions:
                reply = self._next(replies, ends, paused)
                if reply is None:
                    return
                yield reply
        finally:
            with self._lock:
                self._waiting.difference_update(task_ids)
            self.fleet.cancel(task_ids)
            with contextlib.suppress(StorageError):  # the run's end forgets them anyway
                self.journal.close_unanswered(task_ids)

    def pause(self, seconds: float) -> None:
        """Between looks at the live fleet (``wait_for_nodes``): a stopped run stops waiting."""
        if self.stopped.wait(seconds):
            raise RunStopped("the run was stopped")

    def close(self) -> None:
        """End the dispatch calls still waiting (an asynchronous run ends with tasks in
        flight): their tasks are withdrawn from the nodes now, and the calls return."""
        self.stopped.set()
        with self._lock:
            waiting = list(self._waiting)
        self.fleet.cancel(waiting)
        with contextlib.suppress(StorageError):  # the run's end forgets them anyway
            self.journal.close_unanswered(waiting)

    def _open(self, instructions: Sequence[Message], replies: queue.Queue[Message]) -> None:
        """Note the tasks, hand back replies recorded before a restart, queue the rest."""
        with self.journal.lock:
            opened = self.journal.open(instructions)
            for message in instructions:
                if message.task_id in opened.answered:
                    replies.put(opened.answered[message.task_id])
                    continue
                # a task sent before a restart may be in its node's hands already
                with_node = message.task_id in opened.sent_before
                task = QueuedTask(message, self.app_hash, self.run_config, replies, with_node)
                self.fleet.enqueue(task)

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
            log.warning(
                "run %s goes on: its data dir takes writes again (it was paused: %s)",
                self.run_id,
                self.storage_problem.split("\n")[0],
                extra={"run_id": self.run_id},  # this line reaches the run's log
            )
            self.storage_problem = ""

    def _next(
        self,
        replies: queue.Queue[Message],
        ends: Callable[[], float | None],
        paused: list[float],
    ) -> Message | None:
        last = time.monotonic()
        while True:
            if self.stopped.is_set():
                raise RunStopped("the run was stopped")
            self._note_unrecorded()
            now = time.monotonic()
            if self.storage_problem:
                paused[0] += now - last  # a pause for the disk is not the nodes' time
            last = now
            deadline = ends()
            wait = 0.5 if deadline is None else min(0.5, deadline + paused[0] - now)
            if wait <= 0:
                return None
            try:
                return replies.get(timeout=wait)
            except queue.Empty:
                continue
