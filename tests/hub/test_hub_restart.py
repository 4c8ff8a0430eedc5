"""A hub started on the data dir of one that stopped: replies, and the fleet it expects back.

Real Hub objects on a real data dir (SQLite and files in tmp_path), without gRPC: the
transport only turns these calls into RPCs. A crash is a hub closed with its state (the
kernel drops the data dir's lock of a process that dies); one test kills a real process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import pytest

from pollinate.errors import PollinateError
from pollinate.hub import state as state_module
from pollinate.hub.fleet import Duplicate, Fleet, QueuedTask, Refused, TryLater, UnknownTask
from pollinate.hub.grid import HubGrid, RunStopped
from pollinate.hub.hub import Hub
from pollinate.hub.journal import Opened
from pollinate.hub.state import HubState
from pollinate.records import Arrays, Message

TIMEOUT = 60.0  # an upper bound on polling waits: a loaded machine starts processes slowly


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
        crash(hub)


def crash(hub: Hub) -> None:
    """The hub's process dies: its threads stop, and with it goes its lock on the data dir."""
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


def restarted_after_sending(hubs: Callable[..., Hub], *tasks: Message) -> Hub:
    """A hub whose predecessor sent ``tasks`` and crashed; their run has not resumed yet."""
    before = hubs()
    before.journal.open(tasks)
    crash(before)
    return hubs()


def taken_by_its_node(hub: Hub, task: Message) -> queue.Queue[Message]:
    """Queue ``task`` as HubGrid.dispatch does, and let its node take it; its run's replies."""
    hub.heartbeat(task.node_id, "apphash", {}, "s")
    replies: queue.Queue[Message] = queue.Queue()
    hub.journal.open([task])
    hub.fleet.enqueue(QueuedTask(task, "apphash", {}, replies))
    assert hub.next_task(task.node_id, 0) is not None
    return replies


class Push(threading.Thread):
    """A node's push of ``reply``, in the background; ``outcome()`` is what it was told."""

    def __init__(self, hub: Hub, reply: Message) -> None:
        super().__init__(daemon=True)
        self.hub, self.reply = hub, reply
        self.error: PollinateError | None = None

    def run(self) -> None:
        try:
            self.hub.accept_reply(self.reply.node_id, self.reply)
        except PollinateError as exc:
            self.error = exc

    def outcome(self) -> PollinateError | None:
        self.join(TIMEOUT)
        assert not self.is_alive(), "the push did not return"
        return self.error


class SlowDisk:
    """Holds every reply file the hub writes until ``release()``: a push being recorded."""

    def __init__(self, hub: Hub, monkeypatch: pytest.MonkeyPatch) -> None:
        self.writing, self._released = threading.Event(), threading.Event()
        write_file = hub.state.write_file_bytes

        def write_slowly(path: Path, pieces: Iterable[bytes | memoryview]) -> None:
            write_file(path, pieces)
            self.writing.set()
            assert self._released.wait(TIMEOUT), "the test never released the disk"

        monkeypatch.setattr(hub.state, "write_file_bytes", write_slowly)

    def wait_writing(self) -> None:
        assert self.writing.wait(TIMEOUT), "no reply reached the disk"

    def release(self) -> None:
        self._released.set()


# --- replies that reach a restarted hub ----------------------------------------------------


def test_a_reply_to_a_task_sent_before_a_restart_is_recorded_at_once_and_handed_back_later(
    hubs: Callable[..., Hub],
) -> None:
    task = instruction(1)
    after = restarted_after_sending(hubs, task)
    reply = reply_to(task, 3.0)

    after.accept_reply(1, reply)  # the node is told "accepted": it does not push again

    assert len(reply_files(after)) == 1
    opened = after.journal.open([task])  # its round, resumed, asks for the task again
    assert opened.sent_before == frozenset() and list(opened.answered) == [task.task_id]
    np.testing.assert_array_equal(opened.answered[task.task_id].arrays["w"], np.full(3, 3.0))


@pytest.mark.parametrize(
    "push",
    [
        lambda hub, reply: hub.accept_reply(2, dataclasses.replace(reply, node_id=2)),
        lambda hub, reply: hub.accept_reply(1, dataclasses.replace(reply, round=2)),
        lambda hub, reply: hub.accept_reply(1, dataclasses.replace(reply, run_id="other")),
    ],
    ids=["from another node", "for another round", "for another run"],
)
def test_a_reply_to_a_task_sent_before_a_restart_is_refused_unless_it_matches_the_task(
    hubs: Callable[..., Hub], push: Callable[[Hub, Message], None]
) -> None:
    task = instruction(1)
    after = restarted_after_sending(hubs, task)

    with pytest.raises(UnknownTask, match="unknown or already closed"):
        push(after, reply_to(task))

    assert reply_files(after) == []
    assert after.journal.open([task]) == Opened(sent_before=frozenset({task.task_id}))


def test_a_reply_recorded_before_a_restart_is_accepted_again_and_kept_once(
    hubs: Callable[..., Hub],
) -> None:
    # the node pushed, the hub recorded it and died before the node heard "accepted"
    task = instruction(1)
    before = hubs()
    before.journal.open([task])
    first = reply_to(task, 1.0)
    assert before.journal.record(first)
    crash(before)

    after = hubs()
    after.accept_reply(1, first)  # no error: the node stops pushing
    with pytest.raises(Duplicate, match="duplicate reply"):
        after.accept_reply(1, reply_to(task, 2.0))

    assert len(reply_files(after)) == 1
    known = after.journal.open([task]).answered[task.task_id]
    np.testing.assert_array_equal(known.arrays["w"], np.full(3, 1.0, np.float32))


def test_a_reply_to_a_task_whose_round_ended_before_the_restart_is_refused(
    hubs: Callable[..., Hub],
) -> None:
    task = instruction(1)
    before = hubs()
    before.journal.open([task])
    before.journal.close_unanswered([task.task_id])  # the round closed without it
    crash(before)

    after = hubs()
    with pytest.raises(UnknownTask, match="unknown or already closed"):
        after.accept_reply(1, reply_to(task))
    assert reply_files(after) == []


def test_a_reply_to_a_task_nobody_knows_is_refused(hubs: Callable[..., Hub]) -> None:
    hub = hubs()
    with pytest.raises(UnknownTask, match="unknown or already closed"):
        hub.accept_reply(1, reply_to(instruction(1)))
    assert isinstance(UnknownTask("x"), Refused)
    assert reply_files(hub) == []


def test_a_reply_pushed_while_its_resumed_round_opens_its_tasks_reaches_the_round(
    hubs: Callable[..., Hub], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The node pushes as the resumed round opens: the push finds the task not queued yet,
    # and takes the journal's lock only after the round queued it.
    task = instruction(1)
    after = restarted_after_sending(hubs, task)
    after.heartbeat(1, "apphash", {}, "s")
    push_found_no_task, round_opens = threading.Event(), threading.Event()
    claimed, open_tasks = after.fleet.claimed, after.journal.open

    def claimed_as_the_round_opens(task_id: str) -> bool:
        result = claimed(task_id)
        push_found_no_task.set()
        assert round_opens.wait(TIMEOUT)  # the round holds the journal's lock now
        return result

    def open_once_the_push_found_no_task(instructions: Iterable[Message]) -> Opened:
        round_opens.set()
        assert push_found_no_task.wait(TIMEOUT)
        return open_tasks(list(instructions))

    monkeypatch.setattr(after.fleet, "claimed", claimed_as_the_round_opens)
    monkeypatch.setattr(after.journal, "open", open_once_the_push_found_no_task)
    grid = HubGrid(after.fleet, after.journal, "r", "apphash", {})
    got: list[Message] = []

    def run_the_round() -> None:
        with contextlib.suppress(RunStopped):
            got.extend(grid.dispatch([task], timeout=2.0))

    round_ = threading.Thread(target=run_the_round)
    push = Push(after, reply_to(task, 5.0))
    push.start()
    round_.start()
    try:
        assert push.outcome() is None  # the node was told "accepted": it will not push again
        assert len(reply_files(after)) == 1
        assert after.next_task(1, 0) is None  # so it must not get the task to train again
        round_.join(TIMEOUT)
        assert [m.task_id for m in got] == [task.task_id]  # and the round must have the reply
    finally:
        grid.stopped.set()  # the round ends before the hub does
        round_.join(TIMEOUT)


# --- a reply as it is recorded ---------------------------------------------------------------


def test_a_reply_is_on_disk_before_it_is_accepted_and_a_second_push_is_accepted_once(
    hubs: Callable[..., Hub],
) -> None:
    hub = hubs()
    task = instruction(1)
    replies = taken_by_its_node(hub, task)
    reply = reply_to(task)

    hub.accept_reply(1, reply)
    hub.accept_reply(1, reply)  # the node did not hear the first "accepted"

    row = hub.journal.task(task.task_id)
    assert row is not None and row.reply is not None and len(reply_files(hub)) == 1
    assert replies.get_nowait() is reply
    assert replies.empty()  # routed to its run once


def test_a_different_reply_to_an_answered_task_is_refused_as_a_duplicate_and_discarded(
    hubs: Callable[..., Hub],
) -> None:
    hub = hubs()
    task = instruction(1)
    replies = taken_by_its_node(hub, task)
    first = reply_to(task, 1.0)
    hub.accept_reply(1, first)

    with pytest.raises(Duplicate, match="duplicate reply to task 'r:1:fit:1'") as refused:
        hub.accept_reply(1, reply_to(task, 2.0))
    assert isinstance(refused.value, Refused)  # the transport answers accepted=False, reason

    hub.accept_reply(1, first)  # the first one pushed again is still accepted
    assert len(reply_files(hub)) == 1
    known = hub.journal.open([task]).answered[task.task_id]
    np.testing.assert_array_equal(known.arrays["w"], np.full(3, 1.0, np.float32))
    assert replies.get_nowait() is first
    assert replies.empty()  # the run got the first reply, once


@pytest.mark.parametrize(
    "change",
    [
        lambda r: dataclasses.replace(r, num_examples=5),
        lambda r: dataclasses.replace(r, metrics={"acc": 0.5}),
        lambda r: dataclasses.replace(r, error="failed after all"),
        lambda r: dataclasses.replace(r, arrays=Arrays({"w": np.ones(4, np.float32)})),
    ],
    ids=["examples", "metrics", "error", "shape"],
)
def test_a_reply_that_differs_in_anything_is_a_duplicate(
    hubs: Callable[..., Hub], change: Callable[[Message], Message]
) -> None:
    hub = hubs()
    task = instruction(1)
    taken_by_its_node(hub, task)
    first = reply_to(task)
    hub.accept_reply(1, first)
    with pytest.raises(Duplicate, match="duplicate"):
        hub.accept_reply(1, change(first))
    hub.accept_reply(1, dataclasses.replace(first))  # equal, not the same object: accepted


def test_a_second_push_while_the_first_is_being_recorded_is_told_to_try_later(
    hubs: Callable[..., Hub], monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = hubs()
    task = instruction(1)
    replies = taken_by_its_node(hub, task)
    disk = SlowDisk(hub, monkeypatch)
    reply = reply_to(task)
    first = Push(hub, reply)
    first.start()
    disk.wait_writing()

    with pytest.raises(TryLater, match="being recorded"):
        hub.accept_reply(1, reply)

    disk.release()
    assert first.outcome() is None
    hub.accept_reply(1, reply)  # pushed again later: recorded by then, accepted
    assert len(reply_files(hub)) == 1
    assert replies.get_nowait() is reply
    assert replies.empty()


def test_a_reply_whose_stage_closed_while_it_was_recorded_is_refused_and_the_task_stays_closed(
    hubs: Callable[..., Hub], monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = hubs()
    task = instruction(1)
    replies = taken_by_its_node(hub, task)
    disk = SlowDisk(hub, monkeypatch)
    push = Push(hub, reply_to(task))
    push.start()
    disk.wait_writing()

    hub.fleet.cancel([task.task_id])  # the stage's deadline: as HubGrid.dispatch closes it
    hub.journal.close_unanswered([task.task_id])
    disk.release()

    refused = push.outcome()
    assert isinstance(refused, Refused) and "closed (its stage ended)" in str(refused)
    assert hub.journal.task(task.task_id) is None
    assert reply_files(hub) == []  # its file is deleted, not left behind
    assert replies.empty()
    with pytest.raises(UnknownTask):  # a later push finds it closed too
        hub.accept_reply(1, reply_to(task))
    assert hub.journal.task(task.task_id) is None


def test_a_message_that_is_not_a_reply_is_refused(hubs: Callable[..., Hub]) -> None:
    hub = hubs()
    with pytest.raises(Refused, match="not a reply"):
        hub.accept_reply(1, instruction(1))


# --- one hub per data dir --------------------------------------------------------------------


def test_a_second_hub_on_a_data_dir_in_use_is_refused_until_the_first_closes(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "hub"
    first = HubState(data_dir)
    refusal = f"another hub (pid {os.getpid()}) runs on the data dir {data_dir}"
    try:
        with pytest.raises(PollinateError, match=re.escape(refusal)):
            HubState(data_dir)
        with pytest.raises(PollinateError, match=re.escape(refusal)):
            Hub(data_dir)
        first.mark_alive([1])  # the refused ones left the running hub alone
        assert first.alive_at_last_note(30) == [1]
    finally:
        first.close()

    second = HubState(data_dir)
    try:
        assert second.alive_at_last_note(30) == [1]
    finally:
        second.close()


HOLD_THE_DATA_DIR = """
import sys
from pollinate.hub.state import HubState
state = HubState(sys.argv[1])
sys.stdin.read()
"""


def test_the_data_dir_of_a_killed_hub_process_is_free_at_once(tmp_path: Path) -> None:
    data_dir = tmp_path / "hub"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_THE_DATA_DIR, str(data_dir)], stdin=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + TIMEOUT
        lock = data_dir / "hub.lock"
        while not (lock.exists() and lock.read_text() == f"pid {holder.pid}"):
            assert time.monotonic() < deadline, "the other process never took the data dir"
            time.sleep(0.02)
        with pytest.raises(PollinateError, match=f"another hub \\(pid {holder.pid}\\)"):
            HubState(data_dir)
    finally:
        holder.kill()  # SIGKILL: no chance to let go of anything
        holder.wait(TIMEOUT)

    HubState(data_dir).close()


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
    crash(before)

    after = hubs()

    assert after.fleet.alive() == [1, 2]  # before any heartbeat reaches it


def test_a_presumed_node_that_does_not_come_back_is_not_alive_after_the_timeout(
    hubs: Callable[..., Hub],
) -> None:
    before = hubs()
    before.heartbeat(1, "apphash", {}, "s1")
    before.heartbeat(2, "apphash", {}, "s2")
    crash(before)

    after = hubs(heartbeat_timeout=0.3, heartbeat_interval=0.1)
    assert after.fleet.alive() == [1, 2]
    deadline = time.monotonic() + TIMEOUT
    while after.fleet.alive() != [2] and time.monotonic() < deadline:
        after.heartbeat(2, "apphash", {}, "s2")  # node 2 came back; node 1 did not
        time.sleep(0.05)
    assert after.fleet.alive() == [2]


def test_a_node_only_presumed_alive_is_not_heard_from() -> None:
    fleet = Fleet(heartbeat_timeout=30)
    fleet.presume_alive([1, 2, 3])
    fleet.heartbeat(2, "apphash", {}, "s2")
    fleet.sign_of_life(3)  # a pull of a node the restarted hub has not had a heartbeat from

    assert fleet.alive() == [1, 2, 3]
    assert fleet.confirmed_alive() == [2]


def noted(state: HubState) -> dict[int, float]:
    with state.reading() as db:
        return dict(db.execute("SELECT node_id, last_seen FROM nodes").fetchall())


def test_a_node_that_does_not_come_back_is_not_expected_by_the_hub_after_next(
    hubs: Callable[..., Hub], wall: WallClock
) -> None:
    first = hubs()
    first.heartbeat(1, "apphash", {}, "s1")
    first.heartbeat(2, "apphash", {}, "s2")
    crash(first)
    wall.now += 60

    second = hubs(heartbeat_timeout=5)  # expects nodes 1 and 2; only node 2 comes back
    second.heartbeat(2, "apphash", {}, "s2-after")
    wall.now += 1
    deadline = time.monotonic() + TIMEOUT
    while noted(second.state)[2] != wall.now:  # the watchdog notes the live fleet
        assert time.monotonic() < deadline, "the watchdog never noted the live nodes"
        time.sleep(0.02)
    assert 1 in second.fleet.alive()  # still presumed alive, yet not noted as alive
    crash(second)

    third = hubs()
    assert third.fleet.alive() == [2]
