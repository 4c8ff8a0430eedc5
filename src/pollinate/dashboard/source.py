"""What a dashboard shows, behind one interface: a hub's runs and fleet, or a local simulation.

The dashboard never asks which it was given. A ``Source`` answers for a ``Caller`` (who the
session acts as) and publishes its runs' loop events; ``HubSource`` is a hub (every read and
action through the hub's own checks: ``Hub.list_runs``, ``run_info``, ``stop_run``, which
authorize and audit; its nodes are the hub's ``inventory`` for the caller), ``LocalRun`` is a
simulation in this process (one run, the virtual clients that took part as its fleet;
``pollinate run APP --dashboard``).
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

from pollinate.hub.access import DEFAULT_PROJECT, Action, Caller, Forbidden, authorize
from pollinate.hub.events import RunEvents, Subscriber
from pollinate.hub.inventory import NodeEntry, inventory
from pollinate.hub.inventory import NodeState as Availability
from pollinate.hub.state import LogRow, RunRow, RunStatus
from pollinate.loop.events import Event, ReplyReceived, RoundFinished, UpdateRejected
from pollinate.text import MAX_LINE, inert

if TYPE_CHECKING:
    from pollinate.hub.hub import Hub

MAX_LOCAL_NODES = 10_000
"""Virtual clients a simulation's fleet page lists (those heard from last)."""
PROJECTS = (DEFAULT_PROJECT,)
ONLINE = Availability.ONLINE  # a virtual client is there while the simulation runs


@dataclass(frozen=True)
class NodeState:
    """A node as the fleet and node pages show it: its line of the hub's inventory (name,
    projects, state, heartbeat age, labels, resources, runs, certificate expiry) and its node
    config. Text in either came from the node: shown as text."""

    entry: NodeEntry
    config: dict[str, str]

    @property
    def node_id(self) -> int:
        return self.entry.node_id


class Source(Protocol):
    """What the dashboard reads and does; every method may be called from worker threads."""

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Call ``subscriber(run_id, event)`` with every run event; returns the unsubscribe."""
        ...

    def nodes(self, caller: Caller) -> list[NodeState]:
        """The nodes ``caller`` may see."""
        ...

    def runs(self, caller: Caller) -> list[RunRow]:
        """The runs ``caller`` may read."""
        ...

    def run(self, run_id: str, caller: Caller) -> RunRow | None:
        """The run (None: no such run); ``Forbidden`` if ``caller`` may not read it."""
        ...

    def log_after(self, run_id: str, after: int) -> list[LogRow]:
        """The run's log entries after sequence number ``after`` (rounds: kind ``round``)."""
        ...

    def may_stop(self, row: RunRow, caller: Caller) -> bool:
        """Whether to offer ``caller`` a stop button for the run."""
        ...

    def stop(self, run_id: str, caller: Caller) -> str | None:
        """Stop the run: None if stopped, else why not; ``Forbidden`` if ``caller`` may not."""
        ...


class HubSource:
    """A hub, read and acted on through its own checks for each caller."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        return self.hub.events.subscribe(subscriber)

    def nodes(self, caller: Caller) -> list[NodeState]:
        """``inventory`` for ``caller``: it sees the nodes of the projects it may read."""
        config = self.hub.fleet.node_config
        return [NodeState(e, config(e.node_id)) for e in inventory(self.hub, caller=caller)]

    def runs(self, caller: Caller) -> list[RunRow]:
        return self.hub.list_runs(caller=caller)

    def run(self, run_id: str, caller: Caller) -> RunRow | None:
        return self.hub.run_info(run_id, caller=caller)

    def log_after(self, run_id: str, after: int) -> list[LogRow]:
        return self.hub.state.log_after(run_id, after)

    def may_stop(self, row: RunRow, caller: Caller) -> bool:
        try:
            authorize(caller, Action.STOP, row.project)
        except Forbidden:
            return False
        return True

    def stop(self, run_id: str, caller: Caller) -> str | None:
        return self.hub.stop_run(run_id, caller=caller)


class LocalRun:
    """A simulation in this process as a dashboard source: one run, ``RUN_ID``, whose log
    holds its rounds as they end, and the virtual clients that took part as its fleet.

    Hand it the loop's events (``on_event``, the run's ``on_event``) and its end
    (``finish``). Anyone with a session may look; nobody can stop it from the page (Ctrl-C
    in its terminal does).
    """

    RUN_ID = "local"

    def __init__(self, app: str, rounds: int | None) -> None:
        self.events = RunEvents()
        self._lock = threading.Lock()
        self._row = RunRow(
            run_id=self.RUN_ID,
            app=app,
            app_hash="",
            archive="",
            overrides={},
            rounds=rounds,
            seed=0,
            status=RunStatus.RUNNING,
            round=0,
            created=time.time(),
            detail="",
            project=DEFAULT_PROJECT,
        )
        self._log: list[LogRow] = []
        self._heard: OrderedDict[int, float] = OrderedDict()  # node -> monotonic time
        self._note("status", f"simulation of {app} started")

    def on_event(self, event: Event) -> None:
        """One of the run's events, on the run's thread: note it and publish it."""
        with self._lock:
            if isinstance(event, ReplyReceived | UpdateRejected):
                self._heard[event.node_id] = time.monotonic()
                self._heard.move_to_end(event.node_id)
                while len(self._heard) > MAX_LOCAL_NODES:
                    self._heard.popitem(last=False)
            if isinstance(event, RoundFinished):
                self._row = replace(self._row, round=event.record.round)
                self._append("round", json.dumps(event.record.to_dict()))
        self.events.publish(self.RUN_ID, event)

    def finish(self, status: RunStatus, detail: str = "") -> None:
        """The simulation ended with ``status`` (and why, for a failure)."""
        detail = inert(detail, MAX_LINE)
        with self._lock:
            self._row = replace(self._row, status=status, detail=detail)
        self._note("status", f"run {self.RUN_ID} {status}" + (f": {detail}" if detail else ""))

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        return self.events.subscribe(subscriber)

    def nodes(self, caller: Caller) -> list[NodeState]:
        now = time.monotonic()
        with self._lock:
            heard = list(self._heard.items())
            runs = (self.RUN_ID,) if self._row.status is RunStatus.RUNNING else ()
        return [
            NodeState(NodeEntry(node, "", PROJECTS, ONLINE, now - when, runs=runs), {})
            for node, when in sorted(heard)
        ]

    def runs(self, caller: Caller) -> list[RunRow]:
        with self._lock:
            return [self._row]

    def run(self, run_id: str, caller: Caller) -> RunRow | None:
        with self._lock:
            return self._row if run_id == self.RUN_ID else None

    def log_after(self, run_id: str, after: int) -> list[LogRow]:
        with self._lock:
            return [row for row in self._log[after:] if row.run_id == run_id]

    def may_stop(self, row: RunRow, caller: Caller) -> bool:
        return False

    def stop(self, run_id: str, caller: Caller) -> str | None:
        return "a simulation stops with Ctrl-C in the terminal that runs it"

    def _note(self, kind: str, text: str) -> None:
        with self._lock:
            self._append(kind, text)

    def _append(self, kind: str, text: str) -> None:
        # sequence numbers from 1, so that ``log_after(run, seq)`` is ``_log[seq:]``
        self._log.append(LogRow(len(self._log) + 1, self.RUN_ID, time.time(), kind, text))
