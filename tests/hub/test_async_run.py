"""An asynchronous run (FedBuff) through the hub's own objects: a real Hub on a real data dir,
nodes played by threads that pull and push through the Hub API (the transport only turns
these calls into RPCs).

What the hub must do for it: take dispatch calls from many threads at once, keep a task in
flight across the checkpoints of the steps it outlives (its reply is still wanted), and
withdraw the tasks still in flight when the run ends.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from pollinate import Arrays, Client, FedBuff, ServerApp
from pollinate.client.client import Context, handle
from pollinate.hub.fleet import Refused
from pollinate.hub.grid import HubGrid
from pollinate.hub.hub import Hub
from pollinate.loop import RoundRecord, run
from pollinate.loop.checkpoint import Checkpoint
from pollinate.records import Message
from tests.loop.grid_contract import fit_task

TIMEOUT = 20.0


class Nodes:
    """A thread per node: pull a task, run the client, push the reply."""

    def __init__(self, hub: Hub, client: Callable[[int], Client], nodes: list[int]) -> None:
        self.hub, self.client = hub, client
        self.stop = threading.Event()
        self.refused: list[str] = []
        for node in nodes:
            hub.heartbeat(node, "apphash", {}, f"session-{node}")
        self.threads = [threading.Thread(target=self._serve, args=(n,)) for n in nodes]
        for thread in self.threads:
            thread.start()

    def _serve(self, node: int) -> None:
        while not self.stop.is_set():
            task = self.hub.next_task(node, 0.1)
            if task is None:
                continue
            context = Context(node, node, 4, run_config=task.run_config)
            reply = handle(lambda ctx: self.client(ctx.node_id), context, task.message)
            try:
                self.hub.accept_reply(node, reply)
            except Refused as exc:
                self.refused.append(str(exc))

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(TIMEOUT)


class Paced(Client):
    """Nodes 1-3 take 10, 20 and 30 ms; node 4 waits for ``release`` (a straggler)."""

    release = threading.Event()

    def __init__(self, node: int) -> None:
        self.node = node

    def fit(self, arrays, config):
        if self.node == 4:
            self.release.wait(TIMEOUT)
        else:
            time.sleep(0.01 * self.node)
        return Arrays({"w": arrays["w"] + self.node}), self.node, {}


def test_an_asynchronous_run_keeps_every_reply_across_checkpoints_and_ends_cleanly(
    hub: Hub,
) -> None:
    nodes = Nodes(hub, Paced, [1, 2, 3, 4])
    grid = HubGrid(hub.fleet, hub.journal, "async", "apphash", {})
    app = ServerApp(FedBuff(buffer_size=2), num_rounds=8, initial_arrays=Arrays({"w": np.zeros(3)}))

    def checkpoint(saved: Checkpoint) -> None:  # as the hub's Runs does after every step
        hub.journal.save("async", saved, saved.history.rounds[-1])

    try:
        result = run(grid, app, run_id="async", on_checkpoint=checkpoint)
        refused_during_the_run = list(nodes.refused)
        grid.close()  # as Runs does when a run ends
        steps = result.history.rounds[1:]
        # three fast nodes, two updates a step: the third one's task outlives the step's
        # checkpoint, and its reply still counts (stale), never refused or failed
        assert [(r.replies, r.failures, r.applied) for r in steps] == [(2, 0, True)] * 8
        assert max(float(r.fit["staleness"]) for r in steps) > 0
        assert refused_during_the_run == []
        # the tasks still in flight were withdrawn: the straggler's reply is refused, and it
        # gets no task again
        Paced.release.set()
        deadline = time.monotonic() + TIMEOUT
        while not any("async:1:fit:4" in r for r in nodes.refused):
            assert time.monotonic() < deadline, "the straggler's late reply was not refused"
            time.sleep(0.01)
        assert all("closed" in r for r in nodes.refused)  # unknown, or closed as it came
        assert hub.next_task(4, 0) is None
        while any(t.name.startswith("pollinate-async-") for t in threading.enumerate()):
            assert time.monotonic() < deadline, "a dispatch of the ended run is still waiting"
            time.sleep(0.01)
    finally:
        Paced.release.set()
        grid.close()
        nodes.close()


def test_hub_grid_takes_dispatch_calls_from_many_threads(hub: Hub) -> None:
    nodes = Nodes(hub, Paced, [1, 2, 3])
    grid = HubGrid(hub.fleet, hub.journal, "r", "apphash", {})
    got: dict[int, list[str]] = {}

    def call(caller: int) -> None:
        tasks = [replace(fit_task(n), task_id=f"r:{caller}:fit:{n}") for n in (1, 2, 3)]
        got[caller] = sorted(m.task_id for m in grid.dispatch(tasks, timeout=TIMEOUT))

    try:
        callers = [threading.Thread(target=call, args=(c,)) for c in range(4)]
        for thread in callers:
            thread.start()
        for thread in callers:
            thread.join(TIMEOUT)
    finally:
        grid.close()
        nodes.close()
    assert got == {c: [f"r:{c}:fit:{n}" for n in (1, 2, 3)] for c in range(4)}


def test_a_checkpoint_keeps_the_unanswered_tasks_of_the_rounds_it_covers(hub: Hub) -> None:
    answered, in_flight = task("r:1:fit:1", 1), task("r:1:fit:2", 2)
    hub.journal.open([answered, in_flight])
    assert hub.journal.record(reply_to(answered))

    saved = Checkpoint(2, Arrays({"w": np.zeros(3)}))
    hub.journal.save("r", saved, RoundRecord(round=2))

    assert hub.journal.task(answered.task_id) is None  # folded in: forgotten
    assert hub.journal.task(in_flight.task_id) is not None  # an asynchronous run waits for it
    assert hub.journal.record(reply_to(in_flight))
    hub.journal.forget("r")  # the run ended
    assert hub.journal.task(in_flight.task_id) is None


def task(task_id: str, node: int) -> Message:
    return Message(
        "fit",
        task_id=task_id,
        run_id="r",
        round=1,
        node_id=node,
        arrays=Arrays({"w": np.zeros(3)}),
    )


def reply_to(message: Message) -> Message:
    return message.reply(arrays=message.arrays, num_examples=1)


def test_closing_the_grid_ends_a_waiting_dispatch_and_withdraws_its_task(hub: Hub) -> None:
    hub.heartbeat(1, "apphash", {}, "s")
    grid = HubGrid(hub.fleet, hub.journal, "r", "apphash", {})
    ended = threading.Event()

    def wait() -> None:
        with contextlib.suppress(Exception):
            list(grid.dispatch([task("r:1:fit:1", 1)], timeout=None))
        ended.set()

    threading.Thread(target=wait, daemon=True).start()
    deadline = time.monotonic() + TIMEOUT
    while not hub.journal.task("r:1:fit:1"):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    grid.close()
    assert hub.next_task(1, 0) is None  # withdrawn at once, not when the call notices
    assert ended.wait(TIMEOUT)
