"""SimulationGrid: virtual clients run in-process on a bounded thread pool.

A client object exists only while it handles one task (``client_fn`` creates it on demand),
and at most ``2 * concurrency`` tasks are in flight, so memory grows with concurrency, not
with the number of virtual clients.

Threads, not processes: numpy and PyTorch release the GIL in their kernels, and a thread
hands arrays over without serialising them (benchmarks/simulation.py measures the overhead).

Invariant: replies are yielded in the order of the instructions, whatever order the threads
finish in, so a seeded simulation gives the same history twice.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import replace

import numpy as np

from pollinate.client.client import ClientFn, Context, handle
from pollinate.records import Arrays, Config, Message
from pollinate.server.grid import Grid

NodeConfigFn = Callable[[int], Config]


class SimulationGrid(Grid):
    """``num_clients`` virtual clients with ids ``0 .. num_clients - 1``.

    Each client's Context has ``partition_id == node_id`` and ``num_partitions ==
    num_clients``; ``node_config_fn(partition_id)`` gives its node config.
    """

    def __init__(
        self,
        client_fn: ClientFn,
        num_clients: int,
        *,
        concurrency: int | None = None,
        run_config: Config | None = None,
        node_config_fn: NodeConfigFn | None = None,
    ) -> None:
        if isinstance(num_clients, bool) or not isinstance(num_clients, int) or num_clients < 1:
            raise ValueError(f"num_clients must be an int >= 1, got {num_clients!r}")
        self.client_fn = client_fn
        self.num_clients = num_clients
        self.concurrency = max(1, concurrency or os.cpu_count() or 1)
        self.run_config = dict(run_config or {})
        self.node_config_fn = node_config_fn
        self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="pollinate-client")

    def nodes(self) -> list[int]:
        return list(range(self.num_clients))

    def dispatch(self, instructions: Sequence[Message], timeout: float | None) -> Iterator[Message]:
        deadline = None if timeout is None else time.monotonic() + timeout
        todo = iter(instructions)
        window: deque[Future[Message]] = deque()
        self._refill(window, todo)
        while window:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                reply = window[0].result(timeout=remaining)
            except FutureTimeout:
                yield from self._abandon(window)
                return
            window.popleft()
            self._refill(window, todo)
            yield reply

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _refill(self, window: deque[Future[Message]], todo: Iterator[Message]) -> None:
        while len(window) < 2 * self.concurrency:
            instruction = next(todo, None)
            if instruction is None:
                return
            window.append(self._pool.submit(self._handle, instruction))

    def _abandon(self, window: deque[Future[Message]]) -> Iterator[Message]:
        """At the deadline: yield what is already done, cancel the rest."""
        for future in window:
            if future.done():
                yield future.result()
            else:
                future.cancel()

    def _handle(self, instruction: Message) -> Message:
        node = instruction.node_id
        context = Context(
            node_id=node,
            partition_id=node,
            num_partitions=self.num_clients,
            node_config=self.node_config_fn(node) if self.node_config_fn else {},
            run_config=self.run_config,
        )
        # Every virtual client gets its own copy, as a real node would: a client that
        # trains in place must not change the global model or its neighbours' inputs.
        own = Arrays({k: np.array(v) for k, v in instruction.arrays.items()})
        return handle(self.client_fn, context, replace(instruction, arrays=own))
