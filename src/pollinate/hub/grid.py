"""HubGrid: the run loop's Grid over the hub's fleet of real nodes."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator, Sequence

from pollinate.errors import RunError
from pollinate.hub.fleet import Fleet, Task
from pollinate.records import Config, Message
from pollinate.server.grid import Grid


class RunStopped(RunError):
    """The run was stopped by a user."""


class HubGrid(Grid):
    """Dispatches one run's instructions to its nodes and yields their replies as they come."""

    def __init__(self, fleet: Fleet, app_hash: str, run_config: Config) -> None:
        self.fleet = fleet
        self.app_hash = app_hash
        self.run_config = run_config
        self.stopped = threading.Event()

    def nodes(self) -> list[int]:
        return self.fleet.alive()

    def dispatch(self, instructions: Sequence[Message], timeout: float | None) -> Iterator[Message]:
        replies: queue.Queue[Message] = queue.Queue()
        task_ids = [m.task_id for m in instructions]
        for message in instructions:
            self.fleet.enqueue(Task(message, self.app_hash, self.run_config, replies))
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            for _ in instructions:
                reply = self._next(replies, deadline)
                if reply is None:
                    return
                yield reply
        finally:
            self.fleet.cancel(task_ids)

    def _next(self, replies: queue.Queue[Message], deadline: float | None) -> Message | None:
        while True:
            if self.stopped.is_set():
                raise RunStopped("the run was stopped")
            wait = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
            if wait <= 0:
                return None
            try:
                return replies.get(timeout=wait)
            except queue.Empty:
                continue
