"""RayGrid: a simulation's virtual clients on the workers of a Ray cluster.

When one machine is not enough (large models, GPUs on several hosts), the same app runs on
a Ray cluster: ``run_simulation(..., engine=RayEngine("HOST:6379"))``, or ``pollinate run
APP --engine ray --address HOST:6379``. Without an address, Ray starts on this machine bound
to 127.0.0.1, with no dashboard and no usage stats (``ray_start.py``); nothing is installed at
run time (no pip or conda runtime_env).

Each worker is a Ray actor holding a ``SimulationGrid`` of its own, built from the same
arguments, so a virtual client is the same on every engine: its Context, node config,
adversary and speed. Placement is pushed, as in Pollen (Sani et al. 2024): the driver
decides which worker takes each client and sends the task straight to that actor (reply by
reply: the first idle worker, one task each at a time, so no task waits behind a hung
client), rather than submitting tasks for Ray's scheduler to place.

Messages cross as ``pollinate.wire`` bytes, never pickled: the global arrays once per
dispatch (Ray's object store hands them to each machine once), each reply read by
``wire.decode`` as a node's would be. The app's package travels to the cluster's machines
through Ray's own store (``py_modules``; nothing is downloaded or installed), so they need
pollinate and the app's libraries, not the app.

Partial aggregation on the workers, as in Pollen: where a round's result cannot differ (a
weighted-mean strategy or DP-FedAvg, a screen that looks at each update alone, no secure
aggregation; ``loop/summing.py`` decides), ``dispatch_summed`` pushes each idle worker its
share of the round's fit tasks in one call; the worker screens each reply as the hub would
and sums the updates it accepts, and only one partial sum per worker per round travels back,
with each task's small facts (``ray_sums.py``). ``summing=False`` turns it off; slow clients
(``client_speed``) keep every reply.

Invariant, as ``SimulationGrid``'s: replies (and a summed stage's facts) are yielded in the
order of the instructions, so a seeded run's history equals the in-process engine's exactly.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from pollinate.aggregate.mean import PartialSum
from pollinate.client.client import ClientFn
from pollinate.errors import RunError
from pollinate.loop.grid import Grid, Timeout, ends_at
from pollinate.loop.summing import Answered, Seen, Summing
from pollinate.records import Arrays, Config, Message, MessageKind
from pollinate.secagg.identity import KeyRing
from pollinate.simulation.adversary import Adversaries
from pollinate.simulation.grid import NodeConfigFn, SimulationGrid
from pollinate.simulation.ray_start import app_packages, connect
from pollinate.simulation.ray_sums import WorkerBatch, dispatch_summed
from pollinate.simulation.speed import ClientSpeed, Stragglers
from pollinate.wire import decode, encode

READY_SECONDS = 120.0  # for the workers to start (a worker process imports numpy and the app)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RayEngine:
    """Run the clients on a Ray cluster at ``address`` (``HOST:PORT``, as ``ray start
    --head`` prints it), or, without one, on a Ray started on this machine (loopback only)."""

    address: str | None = None


class _Task:
    """An instruction on its way (the ``index``-th of its dispatch): its Ray reference,
    then its reply and when it may go."""

    __slots__ = ("index", "instruction", "ready", "ref", "reply")

    def __init__(self, index: int, instruction: Message, ref: Any) -> None:
        self.index, self.instruction, self.ref = index, instruction, ref
        self.reply: Message | None = None
        self.ready = 0.0  # time.monotonic() from which the reply may be yielded

    def held(self, now: float) -> bool:
        """Answered, and held back for its client's slowdown (its worker is free)."""
        return self.reply is not None and self.ready > now


class RayGrid(Grid):
    """``num_clients`` virtual clients on Ray workers; arguments as ``SimulationGrid``'s,
    with ``concurrency`` the number of workers (default: the cluster's CPUs).
    ``summing=False`` brings every update back even where a round could sum them."""

    def __init__(
        self,
        client_fn: ClientFn,
        num_clients: int,
        *,
        address: str | None = None,
        concurrency: int | None = None,
        run_config: Config | None = None,
        node_config_fn: NodeConfigFn | None = None,
        adversaries: Adversaries | None = None,
        client_speed: Stragglers | ClientSpeed | None = None,
        select: str = "",
        summing: bool = True,
    ) -> None:
        options: dict[str, Any] = {
            "run_config": run_config,
            "node_config_fn": node_config_fn,
            "adversaries": adversaries,
            "client_speed": client_speed,
            "keys": KeyRing(),  # one ring on every worker: each checks the others' clients
        }
        # nodes() here, and every argument checked before Ray starts
        self._here = SimulationGrid(client_fn, num_clients, concurrency=1, select=select, **options)
        self.attackers = self._here.attackers
        self._summing = summing
        self.sums_received = 0  # partial sums that came back (one per worker per summed stage)
        self._closed = False
        self._ray, self._started = connect(address, app_packages(client_fn, node_config_fn))
        try:
            self._workers = self._start_workers(client_fn, num_clients, concurrency, options)
        except BaseException:
            self._shutdown()
            raise

    def nodes(self) -> Sequence[int]:
        return self._here.nodes()

    def wait_for_nodes(self, count: int, timeout: float) -> Sequence[int]:
        """Virtual clients are always there: more will not come by waiting."""
        return self.nodes()

    @property
    def sums_updates(self) -> bool:
        """Workers sum their share (``ray_sums.py``), unless ``summing=False`` or clients are
        slow (``client_speed``), whose held-back replies a worker's sum cannot wait for."""
        return self._summing and self._here.slowdowns is None

    def dispatch_summed(
        self, instructions: Sequence[Message], timeout: Timeout, summing: Summing, seen: Seen
    ) -> Iterator[Answered | PartialSum]:
        summed = dispatch_summed(self._ray, self._workers, instructions, timeout, summing, seen)
        for item in summed:
            if isinstance(item, PartialSum):
                self.sums_received += 1
            yield item

    def dispatch(self, instructions: Sequence[Message], timeout: Timeout) -> Iterator[Message]:
        ends = ends_at(timeout)
        todo = deque(enumerate(instructions))  # not sent yet, in order
        window: list[_Task] = []  # sent, not yielded yet, in order
        bodies: dict[int, tuple[Arrays, Any]] = {}  # id(arrays) -> (arrays, its bytes in Ray)
        try:
            while True:
                self._refill(window, todo, bodies)
                if not window and not todo:
                    return
                self._collect(window)
                head, now, deadline = window[0] if window else None, time.monotonic(), ends()
                if head is not None and head.reply is not None and _due(head, todo) <= now:
                    window.pop(0)
                    yield head.reply
                    continue
                if self._closed or (deadline is not None and deadline <= now):
                    yield from _ready(window, now)
                    return
                self._wait(window, todo, deadline)
        finally:
            self._cancel(window)  # abandoned, or the caller stopped reading

    def close(self) -> None:
        self._closed = True
        self._here.close()
        self._shutdown()

    def _start_workers(
        self, client_fn: ClientFn, num_clients: int, count: int | None, options: dict[str, Any]
    ) -> _Workers:
        ray = self._ray
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        count = count or cpus
        # More workers than CPUs share them, rather than wait for CPUs that never come.
        actor = ray.remote(_Worker).options(
            num_cpus=min(1.0, cpus / count), max_restarts=3, max_concurrency=2
        )
        actors = [actor.remote(client_fn, num_clients, options) for _ in range(count)]
        try:
            ray.get([a.ready.remote() for a in actors], timeout=READY_SECONDS)
        except Exception as exc:  # a worker that cannot load the app, or no room to start
            for a in actors:
                ray.kill(a)
            raise RunError(
                f"the Ray workers did not start: {str(exc)[:2000]}\nHint: every machine of "
                "the cluster needs pollinate and the app's libraries installed, in the "
                "same Python version as this one"
            ) from None
        log.info("%d Ray workers on %d CPUs", count, cpus)
        return _Workers(ray, actors)

    def _refill(
        self,
        window: list[_Task],
        todo: deque[tuple[int, Message]],
        bodies: dict[int, tuple[Arrays, Any]],
    ) -> None:
        """Push instructions to idle workers, keeping at most ``2 x workers`` replies that
        wait for their turn (replies are yielded in instruction order), and beyond that only
        the first unsent instruction, if replies after it wait for it."""
        now = time.monotonic()
        waiting = sum(not task.held(now) for task in window)
        while todo and not self._closed:
            candidates: Sequence[tuple[int, Message]] = todo
            if waiting >= 2 * len(self._workers.actors):
                if not window or todo[0][0] > window[-1].index:
                    return
                candidates = [todo[0]]
            placed = placement(candidates, self._workers.all_idle(), len(self._workers.actors))
            if placed is None:
                return
            position, worker = placed
            index, instruction = todo[position]
            del todo[position]  # the first, but for a secagg task whose worker is busy
            task = self._send(index, instruction, worker, bodies)
            bisect.insort(window, task, key=lambda t: t.index)
            waiting += 1

    def _send(
        self, index: int, instruction: Message, worker: int, bodies: dict[int, tuple[Arrays, Any]]
    ) -> _Task:
        arrays = instruction.arrays
        if id(arrays) not in bodies:  # a round's tasks share one global model: put it once
            body = encode(Message(instruction.kind, arrays=arrays))
            bodies[id(arrays)] = (arrays, self._ray.put(body))
        head = encode(replace(instruction, arrays=Arrays()))
        return _Task(index, instruction, self._workers.send(worker, head, bodies[id(arrays)][1]))

    def _collect(self, window: list[_Task]) -> None:
        """Take the replies of the tasks that finished since the last look."""
        running = {task.ref: task for task in window if task.reply is None}
        if not running:
            return
        done, _ = self._ray.wait(list(running), num_returns=len(running), timeout=0)
        for ref in done:
            task = running[ref]
            try:
                data, held = self._ray.get(ref)
            except self._ray.exceptions.RayActorError as exc:  # its process died (OOM, crash)
                task.reply = task.instruction.reply(error=f"the Ray worker died: {exc}")
                continue
            task.reply, task.ready = decode(data), time.monotonic() + held

    def _wait(
        self, window: list[_Task], todo: deque[tuple[int, Message]], deadline: float | None
    ) -> None:
        """Until a worker is free (to take the next task) or a task of ours ends, the head's
        held-back reply may go, or the deadline."""
        head = window[0] if window else None
        ready = _due(head, todo) if head is not None and head.reply is not None else math.inf
        until = min((t for t in (deadline, ready) if t is not None and t < math.inf), default=None)
        wait = None if until is None else max(0.0, until - time.monotonic())
        running = [task.ref for task in window if task.reply is None]
        if todo and self._workers.any_busy():  # a worker that frees may take the next task
            self._workers.wait_idle(wait)
        elif running:
            self._ray.wait(running, num_returns=1, timeout=wait)
        elif wait:
            time.sleep(wait)

    def _cancel(self, window: list[_Task]) -> None:
        for task in window:
            if task.reply is None:
                with contextlib.suppress(Exception):  # already done, or its worker gone
                    self._ray.cancel(task.ref)

    def _shutdown(self) -> None:
        workers = getattr(self, "_workers", None)
        for actor in workers.actors if workers else []:
            with contextlib.suppress(Exception):
                self._ray.kill(actor)
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()
            self._started = False


class _Workers:
    """The Ray actors and which of them are busy, shared by concurrent dispatch calls.

    A worker takes one task at a time: a task queued behind a hung client would miss its
    deadline while another worker idles. A task counts until its end is seen, even after its
    dispatch abandoned it (a hung client still holds its worker).
    """

    def __init__(self, ray: Any, actors: list[Any]) -> None:
        self._ray, self.actors = ray, actors
        self._busy: dict[Any, int] = {}  # a running task's ref -> its worker's index
        self._lock = threading.Lock()

    def all_idle(self) -> list[int]:
        """The indices of the workers that run nothing now."""
        with self._lock:
            if self._busy:
                busy = list(self._busy)
                ended, _ = self._ray.wait(busy, num_returns=len(busy), timeout=0)
                for ref in ended:
                    del self._busy[ref]
            taken = set(self._busy.values())
            return [i for i in range(len(self.actors)) if i not in taken]

    def send(self, worker: int, head: bytes, body: Any) -> Any:
        ref = self.actors[worker].answer.remote(head, body)
        self.hold(worker, ref)
        return ref

    def hold(self, worker: int, ref: Any) -> None:
        """``worker`` is busy until ``ref`` is ready (a task, a batch, a hung client's end)."""
        with self._lock:
            self._busy[ref] = worker

    def any_busy(self) -> bool:
        """Whether a worker runs something now (ended tasks are let go first: waiting on
        one would return at once)."""
        return len(self.all_idle()) < len(self.actors)

    def wait_idle(self, timeout: float | None) -> None:
        with self._lock:
            busy = list(self._busy)
        if busy:
            self._ray.wait(busy, num_returns=1, timeout=timeout)


class _Worker:
    """A Ray actor: a SimulationGrid of its own, answering one instruction at a time, or
    a summed batch (``ray_sums.py``; its second thread takes the batch's ``stop``)."""

    def __init__(self, client_fn: ClientFn, num_clients: int, options: dict[str, Any]) -> None:
        self._grid = SimulationGrid(client_fn, num_clients, concurrency=1, **options)
        self._batch = WorkerBatch(self._grid)

    def fold(
        self, key: str, heads: list[bytes], body: bytes, summing: Summing
    ) -> Iterator[tuple[str, Any, Any]]:
        yield from self._batch.fold(key, heads, body, summing)

    def stop(self, key: str) -> None:
        self._batch.stop(key)

    def settle(self) -> None:
        self._batch.settle()

    def ready(self) -> int:
        return os.getpid()

    def answer(self, head: bytes, body: bytes) -> tuple[bytes, float]:
        """The reply to the instruction ``head`` with the arrays of ``body`` (wire bytes),
        as wire bytes, and the seconds its client's slowdown holds it back."""
        instruction = replace(decode(head), arrays=decode(body).arrays)
        reply, held = self._grid.answer(instruction)
        return encode(reply), held


def placement(
    todo: Sequence[tuple[int, Message]], idle: Sequence[int], workers: int
) -> tuple[int, int] | None:
    """Which of ``todo``'s instructions goes next (its position) and to which of the
    ``idle`` workers (of ``workers``), or None. Any worker takes any task, but a
    secure-aggregation stage goes to the one worker that holds its client's secrets since
    the round's first stage (``SecAggNode``; its node id modulo the workers): a later
    client whose worker is idle goes first meanwhile.

    >>> fit, secagg = Message("fit", node_id=4), Message("secagg", node_id=4)
    >>> placement([(0, fit)], [1], 2), placement([(0, secagg)], [1], 2)
    ((0, 1), None)
    >>> placement([(0, secagg), (1, Message("secagg", node_id=3))], [1], 2)
    (1, 1)
    """
    if idle:
        for position, (_, instruction) in enumerate(todo):
            if instruction.kind != MessageKind.SECAGG:
                return position, idle[0]
            owner = instruction.node_id % workers
            if owner in idle:
                return position, owner
    return None


def _due(head: _Task, todo: deque[tuple[int, Message]]) -> float:
    """When ``head``'s reply may be yielded: when it is ready, unless an instruction before
    it is not sent yet (that reply goes first: not before a worker takes it)."""
    return math.inf if todo and todo[0][0] < head.index else head.ready


def _ready(window: list[_Task], now: float) -> Iterator[Message]:
    """At the deadline: the replies already there and due, in order; the rest are dropped."""
    for task in window:
        if task.reply is not None and task.ready <= now:
            yield task.reply
