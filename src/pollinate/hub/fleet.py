"""The fleet: which nodes are alive, and the tasks waiting for each of them.

Invariants:
- a reply is accepted at most once, only from the node its task was given to, and only while
  the task is outstanding (not after its round closed);
- a node silent for longer than ``timeout()`` (the hub's ``heartbeat_timeout``, longer in a
  fleet whose heartbeats are paced) has its tasks failed, so no round waits for a dead node
  (nor for one it sampled just before the node fell silent);
- the hub never dials a node: nodes long-poll ``next_task``, one poll at a time, so a newer
  poll from a node supersedes an older one still waiting;
- a node that asks for work holds none (a node works one task at a time, and pushes its
  reply before it pulls again): tasks it took and did not answer were lost on the way, or
  with a process that restarted, and are given to it again;
- after a hub restart, the nodes alive before it are presumed alive for one heartbeat
  timeout: a resumed round samples the fleet it had, and a node that does not come back
  fails its tasks as any silent node does;
- a node takes tasks only of the runs it may serve (``refuses``, the hub's rule: a run's
  project must be one of the node's): a run sees only those nodes (``alive_for``), and a
  task queued for another fails at once, saying why;
- a node cut off (revoked) is never alive again in this fleet: its tasks fail with the
  reason, its poll ends, and it is given no task again;
- placement (``placeable``) reads a node's effective labels: its heartbeat's, overridden key
  by key by those an admin set at the hub; a cordoned node is placeable by no run, but the
  tasks queued for it already are handed to it and answered as any others;
- a node serving several runs takes their tasks round-robin across the runs (the run it was
  served least recently first; within a run, in order), so no run starves another; a task
  it took before and must take again comes first;
- a node whose resources state ``gpus`` >= 1 holds at most that many tasks taken and not
  answered (``take`` hands it no more): a node with one GPU runs one GPU task at a time.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from pollinate.errors import PollinateError
from pollinate.placement import Selector
from pollinate.records import Config, Message

log = logging.getLogger("pollinate.hub")


MAX_TIMES_SENT = 3
"""A task a node took this often without answering fails, rather than being sent again."""


HEARTBEATS_PER_SECOND = 250
"""The heartbeats a hub asks of its whole fleet at most (``Fleet.interval``): a heartbeat
costs the hub ~1 ms of CPU here, nearly all of it inside gRPC, so 10,000 nodes beating every
5 s would need both cores of a 2-core hub; paced, they beat every 40 s (benchmarks/README.md,
Fleet; Nomad's default is 50 a second). Past ``heartbeat_timeout / 3 * HEARTBEATS_PER_SECOND``
nodes (2,500 with the defaults), the timeout grows with the interval (``Fleet.timeout``), so a
node may still miss two beats."""

BEATS_PER_TIMEOUT = 3
"""Paced heartbeats a node has within the timeout (``Fleet.timeout``)."""

SILENT_LINES = 10
"""Nodes falling silent at once that are logged one line each; more are one line together (a
hub that could not keep up with 10,000 nodes logged 5,000 lines in a minute)."""


MAX_RUNS_REMEMBERED = 64
"""Runs whose turn a node remembers (``_next_in_turn``); past it, those with no task queued
for the node are forgotten, and take their turn as new runs if they come back."""


class Refused(PollinateError):
    """The hub refused what a node sent; the message says why."""


class TryLater(PollinateError):
    """The hub cannot take what a node sent now, but may soon: the node sends it again."""


class PollEnded(PollinateError):
    """A node's long-poll is over: the fleet closed, or a newer poll of the node took over."""


class UnknownTask(Refused):
    """A reply to a task this process is not waiting for (closed, or not sent again yet)."""


class Duplicate(Refused):
    """A reply to a task that has another one already: the first reply stands, this one is
    discarded. (The same reply pushed again is accepted again: its node missed "accepted".)"""


@dataclass(eq=False)  # a task is itself, not its contents: queues look tasks up by identity
class QueuedTask:
    """The hub's side of a task: an instruction queued for (or taken by) its node, and where
    its reply goes. (A node's side is ``transport.client.PulledTask``; the instruction itself
    is a ``Message``.)"""

    message: Message
    app_hash: str
    run_config: Config
    replies: queue.Queue[Message]
    with_node: bool = False
    """Taken by the node and not answered yet; a task queued again after a hub restart may
    have been taken before it, so it counts as with its node (and stays queued) until its
    reply comes."""
    times_sent: int = 0
    """How often the node took it; at ``MAX_TIMES_SENT`` without an answer it fails."""


@dataclass
class _Node:
    last_seen: float | None = None  # monotonic; None: never heard, or silent since
    app_hash: str = ""
    node_config: dict[str, str] = field(default_factory=dict)
    session: str = ""
    labels: dict[str, str] = field(default_factory=dict)  # placement: its latest heartbeat's
    resources: dict[str, str] = field(default_factory=dict)
    hub_labels: dict[str, str] = field(default_factory=dict)  # an admin's; they override
    cordoned: bool = False
    heard: bool = False  # by this process (confirmed, not only presumed alive)
    queue: deque[QueuedTask] = field(default_factory=deque)
    served: dict[str, int] = field(default_factory=dict)  # run id: when it was last served

    def alive(self, now: float, timeout: float) -> bool:
        return self.last_seen is not None and now - self.last_seen <= timeout

    def effective_labels(self) -> dict[str, str]:
        return {**self.labels, **self.hub_labels}

    def gpu_slots(self) -> int | None:
        """How many tasks the node may hold at once: its ``gpus``, if it states one or more;
        None (no bound here) otherwise."""
        try:
            gpus = int(self.resources.get("gpus", "0"))
        except ValueError:
            return None
        return gpus if gpus >= 1 else None


def _serves_every_run(node_id: int, run_id: str) -> str | None:
    return None


class Fleet:
    """Live nodes and their task queues; thread-safe.

    Args:
        heartbeat_timeout: seconds of silence after which a node's tasks fail.
        refuses: ``refuses(node_id, run_id)`` says why the node may not take the run's
            tasks, or None if it may (default: every node serves every run). It is called
            without the fleet's lock held, so it may read the hub's state.
    """

    def __init__(
        self,
        heartbeat_timeout: float = 30.0,
        refuses: Callable[[int, str], str | None] = _serves_every_run,
    ) -> None:
        self.heartbeat_timeout = heartbeat_timeout
        self.refuses = refuses
        self._cut_off: dict[int, str] = {}  # node id: why
        self._nodes: dict[int, _Node] = {}
        self._outstanding: dict[str, QueuedTask] = {}
        self._claimed: dict[str, QueuedTask] = {}  # claimed, reply not yet recorded
        self._polls: dict[int, int] = {}
        self._closed = False
        self._changed = threading.Condition()
        self._watchers: list[Callable[[int | None], None]] = []
        self.array_bytes_sent = 0
        """Array bytes of every task nodes took (a task sent again counts again)."""
        self._takes = 0  # tasks taken so far: orders the runs each node served

    def heartbeat(
        self,
        node_id: int,
        app_hash: str,
        node_config: dict[str, str],
        session: str = "",
        labels: dict[str, str] | None = None,
        resources: dict[str, str] | None = None,
    ) -> bool:
        """A sign of life. ``session`` names the node's process: a new one is a restart,
        which the log shows (what the old process took is sent again at its first pull).
        ``labels`` and ``resources`` replace the node's (placement reads them every round).
        True if the node was not counted alive until now (new, back, or restarted)."""
        with self._changed:
            if node_id in self._cut_off:
                return False
            node = self._nodes.get(node_id)
            restarted = bool(session) and node is not None and session != node.session
            arrived = node is None or node.last_seen is None or restarted
            if node is None:
                node = self._nodes[node_id] = _Node(time.monotonic())
            elif node.last_seen is None:
                log.info("node %d is back", node_id)
            if restarted and node.session:
                log.info("node %d restarted", node_id)
            node.last_seen, node.app_hash, node.node_config = (
                time.monotonic(),
                app_hash,
                node_config,
            )
            node.session = session or node.session
            node.labels, node.resources = dict(labels or {}), dict(resources or {})
            node.heard = True
            self._changed.notify_all()
            return arrived

    def beat(
        self,
        node_id: int,
        app_hash: str,
        node_config: dict[str, str],
        session: str,
        labels: dict[str, str],
        resources: dict[str, str],
    ) -> bool:
        """``heartbeat`` for a node this process already counts alive, heard in the same
        session: True once noted. False, noting nothing, for any other node (new, silent,
        presumed, restarted, cut off): its heartbeat is an arrival, which ``Hub.heartbeat``
        writes to hub.db. Cheap enough for the event loop."""
        with self._changed:
            node = self._nodes.get(node_id)
            if (
                node is None
                or node.last_seen is None
                or not node.heard
                or session != node.session
                or node_id in self._cut_off
            ):
                return False
            node.last_seen, node.app_hash, node.node_config = (
                time.monotonic(),
                app_hash,
                node_config,
            )
            node.labels, node.resources = labels, resources
            self._changed.notify_all()
            return True

    def presume_alive(self, node_ids: list[int]) -> None:
        """Count these nodes alive from now (until they miss the heartbeat timeout)."""
        with self._changed:
            for node_id in node_ids:
                node = self._nodes.setdefault(node_id, _Node())
                node.last_seen = node.last_seen or time.monotonic()

    def restore(
        self,
        node_id: int,
        labels: dict[str, str],
        resources: dict[str, str],
        hub_labels: dict[str, str],
        cordoned: bool,
    ) -> None:
        """What a hub before this one knew of the node (``hub.db``): placement reads it until
        the node's heartbeat says otherwise. It does not count the node alive."""
        with self._changed:
            node = self._nodes.setdefault(node_id, _Node())
            if not node.heard:
                node.labels, node.resources = dict(labels), dict(resources)
            node.hub_labels, node.cordoned = dict(hub_labels), cordoned

    def set_hub_labels(self, node_id: int, labels: dict[str, str]) -> dict[str, str]:
        """Replace the labels an admin set on the node; returns its effective labels."""
        with self._changed:
            node = self._nodes.setdefault(node_id, _Node())
            node.hub_labels = dict(labels)
            return node.effective_labels()

    def hub_labels(self, node_id: int) -> dict[str, str]:
        """The labels an admin set on the node."""
        with self._changed:
            node = self._nodes.get(node_id)
            return dict(node.hub_labels) if node else {}

    def cordon(self, node_id: int, cordoned: bool) -> None:
        """Take the node out of new placements (``placeable``), or put it back."""
        with self._changed:
            self._nodes.setdefault(node_id, _Node()).cordoned = cordoned

    def cordoned(self, node_id: int) -> bool:
        with self._changed:
            node = self._nodes.get(node_id)
            return node is not None and node.cordoned

    def interval(self, base: float) -> float:
        """How often each node is told to heartbeat: ``base``, or less often in a fleet so
        large that all of it would beat more than ``HEARTBEATS_PER_SECOND`` times a second
        (as Nomad paces its clients; ``timeout`` grows with it).

        >>> fleet = Fleet(heartbeat_timeout=30.0)
        >>> fleet.interval(5.0), fleet._nodes.update({n: _Node() for n in range(10_000)})
        (5.0, None)
        >>> fleet.interval(5.0), fleet.timeout()
        (40.0, 120.0)
        """
        return max(base, self._paced())

    def timeout(self) -> float:
        """Seconds of silence after which a node is silent (not alive, its tasks failed): the
        hub's ``heartbeat_timeout``, or ``BEATS_PER_TIMEOUT`` paced intervals if that is
        longer, as Nomad's heartbeat TTL grows with its cluster. A paced fleet would otherwise
        lose nodes that missed one beat: 10,000 nodes beat every 40 s, so a node is silent
        after 120 s instead of 30."""
        return max(self.heartbeat_timeout, BEATS_PER_TIMEOUT * self._paced())

    def _paced(self) -> float:
        return len(self._nodes) / HEARTBEATS_PER_SECOND  # a len() needs no lock

    def sign_of_life(self, node_id: int) -> None:
        """Note a sign of life other than a heartbeat (a pull): the node is alive now."""
        with self._changed:
            node = self._nodes.get(node_id)
            if node is not None:
                node.last_seen = time.monotonic()

    def alive(self) -> list[int]:
        """Ids of nodes heard from within the heartbeat timeout, or presumed alive
        (``presume_alive``) and not yet past it."""
        now, timeout = time.monotonic(), self.timeout()
        with self._changed:
            return sorted(
                n
                for n, node in self._nodes.items()
                if node.alive(now, timeout) and n not in self._cut_off
            )

    def alive_for(self, run_id: str) -> list[int]:
        """The alive nodes that may take the run's tasks (``refuses``)."""
        return [n for n in self.alive() if self.refuses(n, run_id) is None]

    def placeable(self, node_ids: list[int], selector: Selector) -> list[int]:
        """Those of ``node_ids`` not cordoned whose effective labels and latest resources
        match ``selector`` (a node presumed alive after a restart: those the last hub kept,
        ``restore``; none if it kept none)."""
        with self._changed:
            nodes = [(n, self._nodes.get(n)) for n in node_ids]
            return [
                n
                for n, node in nodes
                if node is not None
                and not node.cordoned
                and (not selector or selector.matches(node.effective_labels(), node.resources))
            ]

    def runs_of(self, node_id: int) -> list[str]:
        """The runs with a task for the node now: queued for it, or taken and not answered."""
        with self._changed:
            return sorted(
                {
                    t.message.run_id
                    for t in self._outstanding.values()
                    if t.message.node_id == node_id
                }
            )

    def labels_and_resources(self, node_id: int) -> tuple[dict[str, str], dict[str, str]]:
        """The node's effective labels (its latest heartbeat's, overridden by an admin's) and
        its latest resources."""
        with self._changed:
            node = self._nodes.get(node_id)
            if node is None:
                return {}, {}
            return node.effective_labels(), dict(node.resources)

    def reported(self, node_id: int) -> tuple[dict[str, str], dict[str, str]] | None:
        """The labels and resources the node itself reported last; None if it never did to
        this process."""
        with self._changed:
            node = self._nodes.get(node_id)
            if node is None or not node.heard:
                return None
            return dict(node.labels), dict(node.resources)

    def heartbeat_ages(self) -> dict[int, float | None]:
        """Seconds since each known node was last heard from; None if never, or silent."""
        now = time.monotonic()
        with self._changed:
            return {
                n: None if node.last_seen is None else now - node.last_seen
                for n, node in self._nodes.items()
            }

    def confirmed_alive(self) -> list[int]:
        """Alive nodes this process heard from, not only presumed alive after a restart: the
        ones the hub notes as alive, so a hub restarting in a loop stops expecting a dead
        node."""
        alive = set(self.alive())
        with self._changed:
            return sorted(n for n, node in self._nodes.items() if node.heard and n in alive)

    def node_config(self, node_id: int) -> dict[str, str]:
        with self._changed:
            node = self._nodes.get(node_id)
            return dict(node.node_config) if node else {}

    # --- tasks ------------------------------------------------------------------------------

    def enqueue(self, task: QueuedTask) -> None:
        """Queue the task for its node; fail it at once, saying why, if the node may not take
        it (cut off, or refused for the task's run)."""
        node_id = task.message.node_id
        reason = self.refuses(node_id, task.message.run_id)
        with self._changed:
            reason = self._cut_off.get(node_id, reason)
            if reason is not None:
                log.warning("task %s not sent: %s", task.message.task_id, reason)
                task.replies.put(task.message.reply(error=reason, lost=True))
                return
            node = self._nodes.setdefault(node_id, _Node())
            if task not in node.queue:
                node.queue.append(task)
            self._outstanding[task.message.task_id] = task
            self._notify(node_id)

    def next_task(
        self, node_id: int, wait: float, active: Callable[[], bool] | None = None
    ) -> QueuedTask | None:
        """The node's next task, waiting up to ``wait`` seconds for one (a long-poll).

        Returns None at the end of the wait, when the fleet closes, when ``active`` (if given)
        says the caller stopped listening, or when a newer poll of the same node supersedes
        this one: a node restarted under its old id must not find its first task taken by
        the dead process's poll, still waiting here. (The gRPC server polls with
        ``open_poll`` and ``take`` instead, waiting on the event loop, not in a thread.)
        """
        deadline = time.monotonic() + wait
        ticket = self.open_poll(node_id)
        with self._changed:
            while active is None or active():
                try:
                    task = self.take(node_id, ticket)
                except PollEnded:
                    return None
                remaining = deadline - time.monotonic()
                if task is not None or remaining <= 0:
                    return task
                self._changed.wait(remaining)
            return None

    def open_poll(self, node_id: int) -> int:
        """Start a long-poll of ``node_id``, superseding any older one; returns its ticket.

        What the node took and did not answer is queued again first: it asks for work, so it
        holds none.
        """
        with self._changed:
            ticket = self._polls[node_id] = self._polls.get(node_id, 0) + 1
            self._take_back(node_id)
            self._notify(node_id)
            return ticket

    def take(self, node_id: int, ticket: int) -> QueuedTask | None:
        """The node's next queued task for the poll ``ticket``, or None if none is queued.

        Raises PollEnded once the fleet closed or a newer poll of the node superseded it.
        """
        with self._changed:
            if self._closed or self._polls.get(node_id) != ticket or node_id in self._cut_off:
                raise PollEnded(f"the poll of node {node_id} ended")
            node = self._nodes.get(node_id)
            if node is None or not node.queue or self._at_gpu_limit(node_id, node):
                return None
            task = _next_in_turn(node)
            node.queue.remove(task)
            task.with_node = True
            task.times_sent += 1
            self.array_bytes_sent += _array_bytes(task.message)
            self._takes += 1
            node.served[task.message.run_id] = self._takes
            if len(node.served) > MAX_RUNS_REMEMBERED:  # ended runs: their turn is moot
                queued = {t.message.run_id for t in node.queue} | {task.message.run_id}
                node.served = {r: n for r, n in node.served.items() if r in queued}
            return task

    def _at_gpu_limit(self, node_id: int, node: _Node) -> bool:
        """The node holds as many tasks taken and not answered as it has GPUs. Under the
        lock."""
        slots = node.gpu_slots()
        if slots is None:
            return False
        held = sum(
            1
            for t in self._outstanding.values()
            if t.message.node_id == node_id and t.with_node and t not in node.queue
        )
        return held >= slots

    def watch(self, wake: Callable[[int | None], None]) -> None:
        """Call ``wake(node_id)`` whenever a poll of that node may find something new (a task
        queued, a newer poll), and ``wake(None)`` when the fleet closes. ``wake`` runs under
        the fleet's lock: it must only schedule work (e.g. ``call_soon_threadsafe``)."""
        with self._changed:
            self._watchers.append(wake)

    def _notify(self, node_id: int | None) -> None:
        self._changed.notify_all()
        for wake in self._watchers:
            wake(node_id)

    def _take_back(self, node_id: int) -> None:
        """Queue again, ahead of the rest and in order, what the node took and did not
        answer: it asks for work, so it holds none."""
        node = self._nodes.get(node_id)
        if node is None:
            return
        taken = [
            t
            for t in self._outstanding.values()
            if t.message.node_id == node_id and t.with_node and t not in node.queue
        ]
        for task in taken:
            task.with_node = False
            if task.times_sent >= MAX_TIMES_SENT:  # not lost: the node cannot answer it
                del self._outstanding[task.message.task_id]
                reason = f"node {node_id} took this task {task.times_sent} times and never answered"
                task.replies.put(task.message.reply(error=reason, lost=True))
        again = [t for t in taken if t.message.task_id in self._outstanding]
        node.queue.extendleft(reversed(again))
        if again:
            log.warning(
                "node %d asks for work without answering %s: sent again (lost on the way, "
                "or the node restarted)",
                node_id,
                ", ".join(t.message.task_id for t in again),
            )

    def claim(self, node_id: int, message: Message) -> QueuedTask:
        """The outstanding task ``message`` replies to, removed; Refused if there is none."""
        with self._changed:
            task = self._outstanding.get(message.task_id)
            if task is None:
                raise UnknownTask(
                    f"reply for task {message.task_id!r}, which is unknown or already closed "
                    "(answered, or its round ended)"
                )
            _check_reply(task, node_id, message)
            self._claimed[message.task_id] = self._outstanding.pop(message.task_id)
            node = self._nodes.get(node_id)
            if node is not None and task in node.queue:  # sent again, answered before taken
                node.queue.remove(task)
            if node is not None and node.queue and node.gpu_slots() is not None:
                self._notify(node_id)  # a poll held back at its GPU limit may take one now
            return task

    def vet(self, node_id: int, head: Message, array_bytes: int) -> bool:
        """Check a reply from its header alone, before its arrays are read: Refused if it
        answers a task of another node, does not match its task, or declares more array bytes
        than its task allows (``reply_bytes_allowed``). False if this process is not waiting
        for the task (the hub then asks its journal), True if the reply may come in."""
        with self._changed:
            task = self._outstanding.get(head.task_id)
            if task is None:
                return False
            _check_reply(task, node_id, head)
        allowed = reply_bytes_allowed(task.message)
        if allowed is not None and array_bytes > allowed:
            raise Refused(
                f"a reply to {head.task_id!r} declares {array_bytes} bytes of arrays; a "
                f"{task.message.kind} reply to this task may hold at most {allowed}"
            )
        return True

    def claimed(self, task_id: str) -> bool:
        """A reply to this task is being recorded now."""
        with self._changed:
            return task_id in self._claimed

    def settle(self, task: QueuedTask) -> None:
        """The claimed task's reply is recorded: it is done with."""
        with self._changed:
            self._claimed.pop(task.message.task_id, None)

    def unclaim(self, task: QueuedTask) -> None:
        """Put back a task whose reply could not be recorded, so the node's next push is
        taken; not if its stage closed meanwhile."""
        with self._changed:
            if self._claimed.pop(task.message.task_id, None) is not None:
                self._outstanding[task.message.task_id] = task

    def cancel(self, task_ids: list[str]) -> None:
        """Close tasks whose round ended: their late replies are refused."""
        with self._changed:
            for task_id in task_ids:
                self._claimed.pop(task_id, None)
                task = self._outstanding.pop(task_id, None)
                if task is None:
                    continue
                node = self._nodes.get(task.message.node_id)
                if node is not None and task in node.queue:
                    node.queue.remove(task)

    def fail_silent_nodes(self) -> list[int]:
        """Fail every outstanding task of nodes past the heartbeat timeout.

        Returns the nodes that fell silent since the last call. Tasks given to a node already
        silent (or never heard from) fail too: a round that sampled a node just before the
        node fell silent would otherwise wait for it forever.
        """
        now, timeout = time.monotonic(), self.timeout()
        newly_silent: list[int] = []
        with self._changed:
            silent = set()
            for node_id, node in self._nodes.items():
                if node.alive(now, timeout):
                    continue
                silent.add(node_id)
                if node.last_seen is not None:
                    newly_silent.append(node_id)
                    node.last_seen = None
            failed = self._withdraw(silent)
        for task in failed:
            node_id = task.message.node_id
            reason = f"node {node_id} went silent: no heartbeat for over {timeout:g}s"
            task.replies.put(task.message.reply(error=reason, lost=True))
        if len(newly_silent) > SILENT_LINES:  # a fleet's worth: one line, not thousands
            shown = ", ".join(map(str, newly_silent[:SILENT_LINES]))
            log.warning(
                "%d nodes went silent (no heartbeat for over %gs); their tasks failed: nodes "
                "%s and %d more",
                len(newly_silent),
                timeout,
                shown,
                len(newly_silent) - SILENT_LINES,
            )
            return newly_silent
        for node_id in newly_silent:
            log.warning("node %d went silent; its tasks failed", node_id)
        return newly_silent

    def cut_off(self, node_id: int, reason: str) -> None:
        """Cut the node off for good (it was revoked): its queued and taken tasks fail with
        ``reason``, its poll ends, and it is neither alive nor given a task again."""
        with self._changed:
            self._cut_off[node_id] = reason
            node = self._nodes.get(node_id)
            if node is not None:
                node.last_seen = None
            failed = self._withdraw({node_id})
            self._notify(node_id)
        for task in failed:
            task.replies.put(task.message.reply(error=reason, lost=True))
        if failed:
            log.warning("node %d cut off; %d of its tasks failed: %s", node_id, len(failed), reason)

    def cut_off_reason(self, node_id: int) -> str | None:
        """Why the node was cut off, or None if it was not."""
        with self._changed:
            return self._cut_off.get(node_id)

    def _withdraw(self, node_ids: set[int]) -> list[QueuedTask]:
        """Remove the nodes' queued and outstanding tasks; the caller fails them. Under the
        lock."""
        for node_id in node_ids:
            node = self._nodes.get(node_id)
            if node is not None:
                node.queue.clear()
        failed = [t for t in self._outstanding.values() if t.message.node_id in node_ids]
        for task in failed:
            del self._outstanding[task.message.task_id]
        return failed

    def close(self) -> None:
        """Wake every waiting long-poll with no task: the hub is shutting down."""
        with self._changed:
            self._closed = True
            self._notify(None)


def _next_in_turn(node: _Node) -> QueuedTask:
    """The node's next task: one it took before and must take again, else the first of the
    run it served least recently (a run never served first). The queue is not empty."""
    for task in node.queue:
        if task.with_node or task.times_sent:
            return task
    return min(node.queue, key=lambda t: node.served.get(t.message.run_id, 0))


REPLY_SLACK_BYTES = 4 << 20
"""Array bytes a fit reply may hold beyond twice its model's: room for models whose updates
grow a little (boosted trees), never for an upload out of all proportion."""


def _array_bytes(message: Message) -> int:
    return 0 if message.arrays is None else message.arrays.nbytes


def reply_bytes_allowed(instruction: Message) -> int | None:
    """Array bytes a reply to ``instruction`` may declare; None: only the wire's limits.

    A fit reply is an update of the model it was sent (twice the model's bytes plus
    ``REPLY_SLACK_BYTES``), an evaluate reply holds no arrays; other kinds (the model a node
    provides, the secure-aggregation stages) are bounded by the wire's limits alone.
    """
    if instruction.kind == "evaluate":
        return 0
    if instruction.kind == "fit":
        return 2 * instruction.arrays.nbytes + REPLY_SLACK_BYTES
    return None


def _check_reply(task: QueuedTask, node_id: int, message: Message) -> None:
    if task.message.node_id != node_id:
        raise Refused(
            f"node {node_id} replied to task {message.task_id!r}, which was given to "
            f"node {task.message.node_id}"
        )
    if not task.with_node:
        raise Refused(f"task {message.task_id!r} was never sent to node {node_id}")
    expected, got = _identity(task.message), _identity(message)
    if got != expected:
        raise Refused(
            f"reply does not match task {message.task_id!r}: it says (kind, round, run, "
            f"node) = {got}, the task is {expected}"
        )


def _identity(message: Message) -> tuple[str, int, str, int]:
    return (message.kind, message.round, message.run_id, message.node_id)
