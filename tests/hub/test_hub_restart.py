"""A hub started on the data dir of one that stopped: replies, and the fleet it expects back.

Real Hub objects on a real data dir (SQLite and files in tmp_path), without gRPC: the
transport only turns these calls into RPCs.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from pollinate.hub import state as state_module
from pollinate.hub.fleet import Refused, Task, TryLater, UnknownTask
from pollinate.hub.hub import Hub
from pollinate.hub.state import HubState
from pollinate.records import Arrays, Message

TIMEOUT = 10.0


@pytest.fixture
def hubs(tmp_path: Path) -> Iterator[Callable[..., Hub]]:
    """Start hubs on one data dir, as one after another would after crashes; all are closed
    at the end."""
    started: list[Hub] = []

    def start(**options: float) -> Hub:
        hub = Hub(tmp_path / "hub", **options)
        started.append(hub)
        return hub

    yield start
    for hub in started:
        hub.close()
        hub.state.close()


def instruction(node: int, rnd: int = 1) -> Message:
    return Message(
        "fit",
        task_id=f"r:{rnd}:fit:{node}",
        run_id="r",
        round=rnd,
        node_id=node,
        arrays=Arrays({"w": np.zeros(3, np.float32)}),
    )


def reply_to(task: Message, value: float = 1.0) -> Message:
    return task.reply(arrays=Arrays({"w": np.full(3, value, np.float32)}), num_examples=4)


def reply_files(hub: Hub) -> list[Path]:
    return sorted((hub.state.data_dir / "runs" / "r" / "replies").glob("*.pln"))


# --- replies that reach a restarted hub ----------------------------------------------------


def test_a_reply_to_a_task_of_a_run_still_resuming_is_to_be_pushed_again(
    hubs: Callable[..., Hub],
) -> None:
    task = instruction(1)
    before = hubs()
    before.journal.open([task])  # sent by the hub that crashed; its run has not resumed yet
    before.close()

    after = hubs()
    with pytest.raises(TryLater, match="resuming; push again"):
        after.accept_reply(1, reply_to(task))

    assert after.journal.pending(task.task_id)  # nothing recorded: the node pushes again
    assert reply_files(after) == []


def test_a_reply_recorded_before_a_restart_is_accepted_again_and_kept_once(
    hubs: Callable[..., Hub],
) -> None:
    # the node pushed, the hub recorded it and died before the node heard "accepted"
    task = instruction(1)
    before = hubs()
    before.journal.open([task])
    first = reply_to(task, 1.0)
    assert before.journal.record(first)
    before.close()

    after = hubs()
    after.accept_reply(1, first)  # no error: the node stops pushing
    after.accept_reply(1, reply_to(task, 2.0))

    assert len(reply_files(after)) == 1
    [known] = after.journal.open([task]).values()
    assert known is not None
    np.testing.assert_array_equal(known.arrays["w"], np.full(3, 1.0, np.float32))


def test_a_reply_to_a_task_nobody_knows_is_refused(hubs: Callable[..., Hub]) -> None:
    hub = hubs()
    with pytest.raises(UnknownTask, match="unknown or already closed"):
        hub.accept_reply(1, reply_to(instruction(1)))
    assert isinstance(UnknownTask("x"), Refused)
    assert reply_files(hub) == []


def test_a_reply_is_on_disk_before_it_is_accepted_and_a_second_push_is_accepted_once(
    hubs: Callable[..., Hub],
) -> None:
    hub = hubs()
    hub.heartbeat(1, "apphash", {}, "s")
    task = instruction(1)
    replies: queue.Queue[Message] = queue.Queue()
    hub.journal.open([task])  # as HubGrid.dispatch does before it queues the task
    hub.fleet.enqueue(Task(task, "apphash", {}, replies))
    assert hub.next_task(1, 0) is not None
    reply = reply_to(task)

    hub.accept_reply(1, reply)
    hub.accept_reply(1, reply)  # the node did not hear the first "accepted"

    assert hub.journal.recorded(task.task_id) and len(reply_files(hub)) == 1
    assert replies.get_nowait() is reply
    assert replies.empty()  # routed to its run once


def test_a_message_that_is_not_a_reply_is_refused(hubs: Callable[..., Hub]) -> None:
    hub = hubs()
    with pytest.raises(Refused, match="not a reply"):
        hub.accept_reply(1, instruction(1))


# --- the fleet a restarted hub expects back ------------------------------------------------


class WallClock:
    """Stands in for ``time`` inside the state module: ``time()`` is what the test says."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def time(self) -> float:
        return self.now


@pytest.fixture
def wall(monkeypatch: pytest.MonkeyPatch) -> WallClock:
    clock = WallClock()
    monkeypatch.setattr(state_module, "time", clock)
    return clock


@pytest.fixture
def state(tmp_path: Path) -> Iterator[HubState]:
    state = HubState(tmp_path / "state")
    yield state
    state.close()


def test_the_nodes_alive_at_the_last_note_are_those_noted_within_the_window_of_it(
    state: HubState, wall: WallClock
) -> None:
    state.mark_alive([1, 2])
    wall.now += 10
    state.mark_alive([3])
    wall.now += 10
    state.mark_alive([2])
    wall.now += 3600  # the hub was down for an hour: the window is of the last note, not now

    assert state.alive_at_last_note(15) == [2, 3]
    assert state.alive_at_last_note(5) == [2]
    assert state.alive_at_last_note(20) == [1, 2, 3]


def test_nodes_never_noted_alive_are_not_expected_back(state: HubState, wall: WallClock) -> None:
    assert state.alive_at_last_note(30) == []
    enrolled = state.new_node()
    named = state.node_for_name("site-a")
    assert state.alive_at_last_note(1e9) == []
    state.mark_alive([named])
    assert state.alive_at_last_note(1e9) == [named]
    assert enrolled not in state.alive_at_last_note(1e9)


def test_a_restarted_hub_presumes_the_nodes_it_had_alive(hubs: Callable[..., Hub]) -> None:
    before = hubs()
    before.heartbeat(1, "apphash", {}, "s1")  # noted at once, not only by the watchdog
    before.heartbeat(2, "apphash", {}, "s2")
    before.close()

    after = hubs()

    assert after.fleet.alive() == [1, 2]  # before any heartbeat reaches it


def test_a_presumed_node_that_does_not_come_back_is_not_alive_after_the_timeout(
    hubs: Callable[..., Hub],
) -> None:
    before = hubs()
    before.heartbeat(1, "apphash", {}, "s1")
    before.heartbeat(2, "apphash", {}, "s2")
    before.close()

    after = hubs(heartbeat_timeout=0.3, heartbeat_interval=0.1)
    assert after.fleet.alive() == [1, 2]
    deadline = time.monotonic() + TIMEOUT
    while after.fleet.alive() != [2] and time.monotonic() < deadline:
        after.heartbeat(2, "apphash", {}, "s2")  # node 2 came back; node 1 did not
        time.sleep(0.05)
    assert after.fleet.alive() == [2]
