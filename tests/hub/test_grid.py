"""HubGrid keeps the Grid contract, with threads playing the nodes over the real Fleet."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterable

import pytest

from pollinate import Grid
from pollinate.client import ClientFn
from pollinate.client.client import Context, handle
from pollinate.hub.fleet import Fleet, QueuedTask, Refused
from pollinate.hub.grid import HubGrid, RunStopped
from pollinate.hub.journal import Journal
from pollinate.hub.state import HubState
from pollinate.records import Config
from tests.loop.grid_contract import GridContract, fit_task

TIMEOUT = 10.0


class PlayedNodes:
    """Each node a thread: it pulls its tasks from the fleet, runs the client, replies."""

    def __init__(self, fleet: Fleet, client_fn: ClientFn, nodes: Iterable[int]) -> None:
        self.fleet, self.client_fn = fleet, client_fn
        self.nodes = list(nodes)
        self.stop = threading.Event()
        for node in self.nodes:
            fleet.heartbeat(node, "apphash", {})
        self.threads = [threading.Thread(target=self._serve, args=(n,)) for n in self.nodes]
        for thread in self.threads:
            thread.start()

    def _serve(self, node: int) -> None:
        while not self.stop.is_set():
            task = self.fleet.next_task(node, 0.1)
            if task is None:
                continue
            context = Context(node, node, len(self.nodes), run_config=task.run_config)
            reply = handle(self.client_fn, context, task.message)
            with contextlib.suppress(Refused):  # too late: the stage closed without it
                self.fleet.claim(node, reply).replies.put(reply)

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(TIMEOUT)


def hub_grid(fleet: Fleet, run_config: Config | None = None) -> HubGrid:
    """A HubGrid whose journal lives in a temporary data dir (removed with the process)."""
    state = HubState(tempfile.mkdtemp(prefix="pollinate-grid-"))
    weakref.finalize(state, shutil.rmtree, state.data_dir, True)
    return HubGrid(fleet, Journal(state), "run", "apphash", run_config or {})


class GridWithPlayedNodes(HubGrid):
    def __init__(self, client_fn: ClientFn, num_nodes: int) -> None:
        made = hub_grid(Fleet(heartbeat_timeout=60), {"lr": 0.1})
        super().__init__(made.fleet, made.journal, "run", "apphash", {"lr": 0.1})
        self.played = PlayedNodes(self.fleet, client_fn, range(num_nodes))

    def close(self) -> None:
        self.played.close()
        self.journal.state.close()


class TestHubGrid(GridContract):
    def make_grid(self, client_fn: ClientFn, num_nodes: int) -> Grid:
        return GridWithPlayedNodes(client_fn, num_nodes)


# --- what HubGrid adds ------------------------------------------------------------------------


def in_thread(target: Callable[[], object]) -> threading.Thread:
    thread = threading.Thread(target=target)
    thread.start()
    return thread


def pulled(fleet: Fleet, node: int) -> QueuedTask:
    task = fleet.next_task(node, TIMEOUT)
    assert task is not None, f"node {node} got no task"
    return task


def test_a_task_carries_the_runs_app_hash_and_config_and_its_reply_comes_back() -> None:
    fleet = Fleet()
    fleet.heartbeat(1, "apphash", {})
    grid = hub_grid(fleet, {"lr": 0.1})
    seen: list[QueuedTask] = []

    def node() -> None:
        task = pulled(fleet, 1)
        seen.append(task)
        reply = task.message.reply(arrays=task.message.arrays, num_examples=3)
        fleet.claim(1, reply).replies.put(reply)

    thread = in_thread(node)
    [reply] = list(grid.dispatch([fit_task(1)], timeout=TIMEOUT))
    thread.join(TIMEOUT)

    assert grid.nodes() == [1]
    assert (seen[0].app_hash, seen[0].run_config) == ("apphash", {"lr": 0.1})
    assert (reply.task_id, reply.num_examples) == ("t1", 3)


def test_the_deadline_ends_dispatch_and_a_late_reply_is_refused() -> None:
    fleet = Fleet()
    fleet.heartbeat(1, "apphash", {})
    fleet.heartbeat(2, "apphash", {})
    grid = hub_grid(fleet, {})
    taken: list[QueuedTask] = []
    thread = in_thread(lambda: taken.append(pulled(fleet, 1)))  # takes its task, never answers

    started = time.monotonic()
    assert list(grid.dispatch([fit_task(1), fit_task(2)], timeout=0.5)) == []
    assert time.monotonic() - started < TIMEOUT
    thread.join(TIMEOUT)

    late = taken[0].message.reply(arrays=taken[0].message.arrays, num_examples=1)
    with pytest.raises(Refused, match="unknown or already closed"):
        fleet.claim(1, late)
    assert fleet.next_task(2, 0) is None  # node 2's task, never pulled, was withdrawn


def test_stopping_the_run_ends_dispatch_with_run_stopped() -> None:
    fleet = Fleet()
    fleet.heartbeat(1, "apphash", {})
    grid = hub_grid(fleet, {})

    def node() -> None:
        pulled(fleet, 1)
        grid.stopped.set()  # a user stops the run while node 1 trains

    thread = in_thread(node)
    with pytest.raises(RunStopped, match="stopped"):
        list(grid.dispatch([fit_task(1)], timeout=None))
    thread.join(TIMEOUT)
    with pytest.raises(Refused):
        fleet.claim(1, fit_task(1).reply(num_examples=1))


def test_a_node_gone_silent_fails_its_task_instead_of_holding_the_stage() -> None:
    fleet = Fleet(heartbeat_timeout=0.2)
    fleet.heartbeat(1, "apphash", {})
    grid = hub_grid(fleet, {})

    def dying_node() -> None:
        pulled(fleet, 1)
        time.sleep(0.3)  # no heartbeat for longer than the timeout...
        fleet.fail_silent_nodes()  # ...as the hub's watchdog notices

    thread = in_thread(dying_node)
    [reply] = list(grid.dispatch([fit_task(1)], timeout=None))
    thread.join(TIMEOUT)
    assert reply.task_id == "t1" and "node 1 went silent" in (reply.error or "")
    assert grid.nodes() == []


def test_dispatch_of_nothing_returns_at_once() -> None:
    assert list(hub_grid(Fleet()).dispatch([], timeout=None)) == []
