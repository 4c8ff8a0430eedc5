"""The hub's run events, handed from the runs' threads to the dashboard's event loop.

The hub calls ``Feed.on_event`` on a run's thread (``Hub.events``), so it must be quick: it
only puts the event on the web loop's thread-safe queue (``call_soon_threadsafe``) and
returns. On the loop, the event is noted (which nodes took part in which round, what each
node last did) and fanned out to the open event streams that want it.

Invariant: a slow browser never slows a run nor grows memory without bound: a stream that
falls ``QUEUE_SIZE`` events behind is ended, and its browser reconnects and starts again
from a snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from pollinate.loop.events import Event, ReplyReceived, UpdateRejected

QUEUE_SIZE = 1000
"""Events a stream may fall behind before it is ended (its browser reconnects)."""
MAX_RUNS = 100
"""Runs whose participants are remembered (the oldest are forgotten first)."""
MAX_ROUNDS = 10_000
"""Rounds of a run whose participants are remembered (the oldest are forgotten first)."""

_RANK = {"ok": 0, "failed": 1, "rejected": 2}

Wanted = Callable[[str, Event], bool]


@dataclass(frozen=True)
class Activity:
    """What a node did last: a task of ``run_id``'s ``round`` and ``stage`` ended, ``ok``
    or not, at ``when`` (``time.time()``)."""

    run_id: str
    round: int
    stage: str
    ok: bool
    when: float


class Listener:
    """One event stream's queue of ``(run_id, event)``, holding only what it ``wants``."""

    def __init__(self, wants: Wanted) -> None:
        self.wants = wants
        self.queue: asyncio.Queue[tuple[str, Event]] = asyncio.Queue(QUEUE_SIZE)
        self.overflowed = False

    def offer(self, run_id: str, event: Event) -> None:
        if self.overflowed or not self.wants(run_id, event):
            return
        try:
            self.queue.put_nowait((run_id, event))
        except asyncio.QueueFull:
            self.overflowed = True


class Feed:
    """Run events for the dashboard: attached to the web loop, subscribed to ``Hub.events``."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listeners: set[Listener] = set()
        # run -> round -> node -> "ok" | "failed" | "rejected"; touched on the loop only
        self._took_part: OrderedDict[str, dict[int, dict[int, str]]] = OrderedDict()
        self.activity: dict[int, Activity] = {}
        """Each node's last task, by node id (read on the loop)."""

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Deliver events on ``loop`` from now on."""
        self._loop = loop

    def on_event(self, run_id: str, event: Event) -> None:
        """A run's event, on the run's thread: hand it to the web loop and return."""
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop closed: the dashboard stopped
            loop.call_soon_threadsafe(self._deliver, run_id, event)

    @contextlib.contextmanager
    def listen(self, wants: Wanted) -> Iterator[Listener]:
        """A listener for the length of an event stream (on the loop)."""
        listener = Listener(wants)
        self._listeners.add(listener)
        try:
            yield listener
        finally:
            self._listeners.discard(listener)

    def took_part(self, run_id: str) -> dict[int, dict[int, str]]:
        """Round -> node -> how its task ended, for the rounds this dashboard saw."""
        return {r: dict(nodes) for r, nodes in self._took_part.get(run_id, {}).items()}

    def _deliver(self, run_id: str, event: Event) -> None:
        self._note(run_id, event)
        for listener in list(self._listeners):
            listener.offer(run_id, event)

    def _note(self, run_id: str, event: Event) -> None:
        if not isinstance(event, ReplyReceived | UpdateRejected):
            return
        rounds = self._took_part.setdefault(run_id, {})
        self._took_part.move_to_end(run_id)
        while len(self._took_part) > MAX_RUNS:
            self._took_part.popitem(last=False)
        nodes = rounds.setdefault(event.round, {})
        while len(rounds) > MAX_ROUNDS:
            del rounds[min(rounds)]
        if isinstance(event, UpdateRejected):
            nodes[event.node_id] = "rejected"
            return
        outcome = "ok" if event.ok else "failed"
        # a node's worst outcome of the round shows: rejected, then failed, then ok
        if _RANK[outcome] > _RANK.get(nodes.get(event.node_id, ""), -1):
            nodes[event.node_id] = outcome
        self.activity[event.node_id] = Activity(
            run_id, event.round, str(event.stage), event.ok, time.time()
        )
