"""SimulationGrid: virtual clients run in-process on a bounded thread pool.

A client object exists only while it handles one task (``client_fn`` creates it on demand),
and at most ``2 * concurrency`` tasks are in flight, so memory grows with concurrency, not
with the number of virtual clients. (A straggler's reply held back for its slowdown,
``client_speed``, does not count: its client is gone, and the others go on meanwhile.)

Threads, not processes: numpy and PyTorch release the GIL in their kernels, and a thread
hands arrays over without serialising them (benchmarks/simulation.py measures the overhead).

With ``adversaries``, a chosen fraction of the clients attacks (``adversary.py``): their
Context's ``node_config["attack"]`` names the attack, and their fit replies are poisoned
after they trained honestly, with an RNG seeded by ``(adversary seed, round, node)``.

Invariant: replies are yielded in the order of the instructions, whatever order the threads
finish in, so a seeded simulation gives the same history twice.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import replace
from typing import NamedTuple

import numpy as np

from pollinate.checks import integer
from pollinate.client.client import ClientFn, Context, handle
from pollinate.loop.grid import Grid, Timeout, ends_at
from pollinate.placement import Selector, parse_selector
from pollinate.records import Config, Message
from pollinate.secagg.identity import KeyRing
from pollinate.secagg.node import SecAggNode
from pollinate.secagg.node import handlers as secagg_handlers
from pollinate.simulation.adversary import Adversaries
from pollinate.simulation.speed import ClientSpeed, Stragglers, slowdowns

NodeConfigFn = Callable[[int], Config]


class _Done(NamedTuple):
    reply: Message
    ready: float  # time.monotonic() from which the reply may be yielded


class SimulationGrid(Grid):
    """``num_clients`` virtual clients with ids ``0 .. num_clients - 1``.

    Each client's Context has ``partition_id == node_id`` and ``num_partitions ==
    num_clients``, also as ``node_config["partition-id"]`` / ``["num-partitions"]`` (as
    Flower sets them); ``node_config_fn(partition_id)`` adds to its node config. ``attackers``
    holds the ids that ``adversaries`` chose (empty without). ``client_speed`` makes clients
    slow (``speed.py``): ``Stragglers(0.2, slowdown=10.0)``, or ``node_id -> slowdown``.
    ``select`` tries a placement before it is deployed (``pollinate.placement``): only the
    clients whose node config matches it are offered to the run, each value read as a label
    (``{"region": "eu", "gpus": 1}`` matches ``gpus>=1,region in (eu)``). A virtual client's
    node config does not change, so they are chosen once, reading every client's config.
    ``keys`` are the clients' identities for secure aggregation (a fresh ``KeyRing`` unless
    given): grids that answer for the same clients in other processes share one.
    """

    def __init__(
        self,
        client_fn: ClientFn,
        num_clients: int,
        *,
        concurrency: int | None = None,
        run_config: Config | None = None,
        node_config_fn: NodeConfigFn | None = None,
        adversaries: Adversaries | None = None,
        client_speed: Stragglers | ClientSpeed | None = None,
        select: str = "",
        keys: KeyRing | None = None,
    ) -> None:
        self.client_fn = client_fn
        self.num_clients = integer(
            "num_clients", num_clients, minimum=1, hint="SimulationGrid(client_fn, num_clients=10)"
        )
        self.concurrency = max(1, concurrency or os.cpu_count() or 1)
        self.run_config = dict(run_config or {})
        self.node_config_fn = node_config_fn
        self.adversaries = adversaries
        self.attackers = adversaries.clients(num_clients) if adversaries else frozenset[int]()
        self.slowdowns = slowdowns(client_speed, num_clients) if client_speed else None
        self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="pollinate-client")
        self._closed = False
        self._waiting: set[threading.Event] = set()  # woken by close()
        self._lock = threading.Lock()
        self._keys = keys or KeyRing()  # the virtual fleet's identities
        self._secagg_nodes: dict[int, SecAggNode] = {}
        self._handlers = secagg_handlers(self._client, self._secagg)
        self._placed = self._matching(parse_selector(select)) if select else None

    def nodes(self) -> Sequence[int]:
        """Every client (a ``range``), or those that match ``select``."""
        return range(self.num_clients) if self._placed is None else self._placed

    def _matching(self, selector: Selector) -> list[int]:
        return [
            node
            for node in range(self.num_clients)
            if selector.matches(_as_labels(self._node_config(node)), {})
        ]

    def dispatch(self, instructions: Sequence[Message], timeout: Timeout) -> Iterator[Message]:
        ends = ends_at(timeout)
        todo = iter(instructions)
        window: deque[Future[_Done]] = deque()
        wake = threading.Event()  # set as a task of this call is done, and by close()
        with self._lock:
            self._waiting.add(wake)
        try:
            while True:
                wake.clear()
                self._refill(window, todo, wake)
                if not window:
                    return
                deadline = ends()  # a Deadline may have moved with the last reply
                head, now = window[0], time.monotonic()
                # result() raises what the task raised, as a grid error (clients' errors
                # are replies)
                ready = head.result().ready if head.done() and not head.cancelled() else None
                if ready is not None and ready <= now:
                    yield window.popleft().result().reply
                    continue
                if self._closed or (deadline is not None and deadline <= now):
                    yield from self._abandon(window)
                    return
                until = min((t for t in (ready, deadline) if t is not None), default=None)
                wait = None if until is None else until - now
                if ready is None:
                    _wait_done(head, wait)  # the head's end is the next thing to act on
                else:
                    wake.wait(wait)  # a held-back head: refill as other tasks end meanwhile
        finally:
            with self._lock:
                self._waiting.discard(wake)

    def wait_for_nodes(self, count: int, timeout: float) -> Sequence[int]:
        """Virtual clients are always there: more will not come by waiting."""
        return self.nodes()

    def close(self) -> None:
        self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            for wake in self._waiting:
                wake.set()

    def _refill(
        self, window: deque[Future[_Done]], todo: Iterator[Message], wake: threading.Event
    ) -> None:
        working = len(window)
        if self.slowdowns:  # a reply held back does not count: its client is gone
            now = time.monotonic()
            working -= sum(_held_back(future, now) for future in window)
        while working < 2 * self.concurrency and not self._closed:
            instruction = next(todo, None)
            if instruction is None:
                return
            future = self._pool.submit(self._timed, instruction)
            if self.slowdowns:
                future.add_done_callback(lambda _: wake.set())
            window.append(future)
            working += 1

    def _abandon(self, window: deque[Future[_Done]]) -> Iterator[Message]:
        """At the deadline: yield what is already done, cancel the rest."""
        now = time.monotonic()
        for future in window:
            if future.done() and _succeeded(future) and future.result().ready <= now:
                yield future.result().reply
            else:
                future.cancel()

    def answer(self, instruction: Message) -> tuple[Message, float]:
        """Handle one instruction now, in this thread: the reply, and the seconds to hold it
        back from then on, as a slow client (``client_speed``) takes ``slowdown`` times its
        real time. Each Ray worker (``ray_engine.py``) answers through it."""
        started = time.monotonic()
        reply = self._handle(instruction)
        took = time.monotonic() - started
        node = instruction.node_id
        slowdown = self.slowdowns[node] if self.slowdowns and 0 <= node < self.num_clients else 1.0
        return reply, (slowdown - 1.0) * took

    def _timed(self, instruction: Message) -> _Done:
        reply, held = self.answer(instruction)
        return _Done(reply, time.monotonic() + held)

    def _handle(self, instruction: Message) -> Message:
        node = instruction.node_id
        context = Context(
            node_id=node,
            partition_id=node,
            num_partitions=self.num_clients,
            node_config=self._node_config(node),
            run_config=self.run_config,
        )
        # Every virtual client gets its own copy, as a real node would: a client that
        # trains in place must not change the global model or its neighbours' inputs.
        return self._handlers.answer(
            context, replace(instruction, arrays=instruction.arrays.copy())
        )

    def _client(self, context: Context, instruction: Message) -> Message:
        """The app's client's reply, poisoned if the client is an adversary."""
        node = instruction.node_id
        if self.adversaries is None or node not in self.attackers or instruction.kind != "fit":
            return handle(self.client_fn, context, instruction)
        received = instruction.arrays.copy()  # the client may train its own in place
        reply = handle(self.client_fn, context, instruction)
        if reply.error is not None:
            return reply  # only updates are poisoned; a client's failure stays its failure
        rng = np.random.default_rng([self.adversaries.seed, instruction.round, node])
        return replace(reply, arrays=self.adversaries.poison(received, reply.arrays, rng))

    def _secagg(self, context: Context) -> SecAggNode:
        """The virtual client's side of secure aggregation, with a key from the grid's ring."""
        node = context.node_id
        with self._lock:
            if node not in self._secagg_nodes:
                identity = self._keys.identity(node)
                self._secagg_nodes[node] = SecAggNode(node, identity, keep_masked=False)
            return self._secagg_nodes[node]

    def _node_config(self, node: int) -> Config:
        # the keys Flower's simulation sets, so Flower apps find their partition
        config: Config = {"partition-id": node, "num-partitions": self.num_clients}
        if self.node_config_fn:
            config.update(self.node_config_fn(node))
        if self.adversaries is not None and node in self.attackers:
            # Every attacker is told, so an app can see it; label-flip needs the app to act.
            config = {**config, "attack": self.adversaries.attack}
        return config


def _succeeded(future: Future[_Done]) -> bool:
    return not future.cancelled() and future.exception() is None


def _held_back(future: Future[_Done], now: float) -> bool:
    """Done, and its reply held back for its client's slowdown."""
    return future.done() and _succeeded(future) and future.result().ready > now


def _wait_done(future: Future[_Done], timeout: float | None) -> None:
    """Until ``future`` is done, cancelled, or ``timeout`` seconds passed (as cheap a wait
    as ``result()``, unlike ``concurrent.futures.wait``)."""
    with contextlib.suppress(FutureTimeout, CancelledError):
        future.exception(timeout)


def _as_labels(config: Config) -> dict[str, str]:
    """A node config as labels: ``True`` is ``true``, numbers as Python writes them."""
    return {
        key: ("true" if value else "false") if isinstance(value, bool) else str(value)
        for key, value in config.items()
    }
