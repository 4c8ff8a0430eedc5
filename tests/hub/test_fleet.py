"""The fleet's rules: who may reply to what, and what happens to the tasks of silent nodes.

Heartbeat timeouts run on a virtual clock, so they are exact and instant; the long-poll rules
use real threads with bounded waits.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

import numpy as np
import pytest

from pollinate.hub.fleet import Fleet, QueuedTask, Refused
from pollinate.records import Arrays, Message
from tests.hub.conftest import Clock

TIMEOUT = 10.0


def task(node: int, kind: str = "fit", rnd: int = 1, run: str = "r") -> QueuedTask:
    message = Message(
        kind,
        task_id=f"{run}:{rnd}:{kind}:{node}",
        run_id=run,
        round=rnd,
        node_id=node,
        arrays=Arrays({"w": np.zeros(2)}),
    )
    return QueuedTask(message, "apphash", {"lr": 0.1}, queue.Queue())


def handed_out(fleet: Fleet, *tasks: QueuedTask) -> None:
    """Enqueue ``tasks`` and let their nodes pull them, as a node's long-poll would."""
    for t in tasks:
        fleet.enqueue(t)
    for t in tasks:
        assert fleet.next_task(t.message.node_id, 0) is t


def reply_to(t: QueuedTask, **fields: object) -> Message:
    return t.message.reply(arrays=t.message.arrays, num_examples=1, **fields)


# --- a reply is accepted at most once, from its node, while its task is outstanding --------


def test_a_reply_is_accepted_once(clock: Clock) -> None:
    fleet = Fleet()
    t = task(1)
    handed_out(fleet, t)
    assert fleet.claim(1, reply_to(t)) is t
    with pytest.raises(Refused, match="unknown or already closed"):
        fleet.claim(1, reply_to(t))


def test_a_reply_from_another_node_is_refused_and_the_task_stays_open(clock: Clock) -> None:
    fleet = Fleet()
    t = task(1)
    handed_out(fleet, t)
    with pytest.raises(Refused, match=r"node 2 replied to task 'r:1:fit:1', .* given to node 1"):
        fleet.claim(2, reply_to(t))
    assert fleet.claim(1, reply_to(t)) is t


def test_a_reply_to_an_unknown_task_is_refused(clock: Clock) -> None:
    with pytest.raises(Refused, match="'nope', which is unknown or already closed"):
        Fleet().claim(1, Message("fit", task_id="nope", node_id=1, is_reply=True))


def test_a_reply_to_a_task_never_sent_is_refused(clock: Clock) -> None:
    fleet = Fleet()
    t = task(1)
    fleet.enqueue(t)
    with pytest.raises(Refused, match="was never sent to node 1"):
        fleet.claim(1, reply_to(t))


@pytest.mark.parametrize(
    "field",
    [{"kind": "evaluate"}, {"round": 2}, {"run_id": "other"}, {"node_id": 7}],
    ids=["kind", "round", "run", "node"],
)
def test_a_reply_that_does_not_match_its_task_is_refused(
    clock: Clock, field: dict[str, object]
) -> None:
    fleet = Fleet()
    t = task(1)
    handed_out(fleet, t)
    fields = {
        "kind": "fit",
        "task_id": t.message.task_id,
        "run_id": "r",
        "round": 1,
        "node_id": 1,
        "is_reply": True,
        "num_examples": 1,
        "loss": 0.0,
    }
    with pytest.raises(Refused, match="reply does not match task 'r:1:fit:1'"):
        fleet.claim(1, Message(**{**fields, **field}))  # type: ignore[arg-type]
    assert fleet.claim(1, reply_to(t)) is t  # the real reply still gets in


def test_cancel_closes_sent_tasks_and_withdraws_queued_ones(clock: Clock) -> None:
    fleet = Fleet()
    sent, queued = task(1), task(2)
    handed_out(fleet, sent)
    fleet.enqueue(queued)
    fleet.cancel([sent.message.task_id, queued.message.task_id, "unknown"])
    with pytest.raises(Refused, match="unknown or already closed"):
        fleet.claim(1, reply_to(sent))
    assert fleet.next_task(2, 0) is None


# --- silent nodes -----------------------------------------------------------------------------


def failure_of(t: QueuedTask) -> str:
    reply = t.replies.get_nowait()
    assert reply.is_reply and reply.task_id == t.message.task_id
    assert reply.error is not None
    return reply.error


def test_alive_means_heard_from_within_the_heartbeat_timeout(clock: Clock) -> None:
    fleet = Fleet(heartbeat_timeout=3)
    fleet.heartbeat(1, "h", {})
    clock.advance(2)
    fleet.heartbeat(2, "h", {})
    assert fleet.alive() == [1, 2]
    clock.advance(1.5)
    assert fleet.alive() == [2]
    fleet.sign_of_life(1)  # a pull is a sign of life too
    assert fleet.alive() == [1, 2]


def test_a_silent_node_has_its_tasks_failed_and_a_healthy_one_keeps_its_own(
    clock: Clock,
) -> None:
    fleet = Fleet(heartbeat_timeout=3)
    fleet.heartbeat(1, "h", {})
    fleet.heartbeat(2, "h", {})
    sent1, queued1, sent2 = task(1), task(1, "evaluate"), task(2)
    handed_out(fleet, sent1, sent2)
    fleet.enqueue(queued1)
    clock.advance(2)
    fleet.heartbeat(2, "h", {})
    clock.advance(2)  # node 1 quiet for 4s, node 2 for 2s

    assert fleet.fail_silent_nodes() == [1]

    for t in (sent1, queued1):
        assert failure_of(t) == "node 1 went silent: no heartbeat for over 3s"
    assert sent2.replies.empty()
    assert fleet.alive() == [2]
    assert fleet.next_task(1, 0) is None  # its queue is gone
    with pytest.raises(Refused, match="unknown or already closed"):
        fleet.claim(1, reply_to(sent1))  # a late reply from the dead
    assert fleet.claim(2, reply_to(sent2)) is sent2
    assert fleet.fail_silent_nodes() == []  # reported once


def test_a_task_for_a_node_already_silent_fails_at_the_next_check(clock: Clock) -> None:
    # a round may sample a node just before it is found silent, then give it a task
    fleet = Fleet(heartbeat_timeout=3)
    fleet.heartbeat(1, "h", {})
    clock.advance(4)
    assert fleet.fail_silent_nodes() == [1]
    late = task(1)
    fleet.enqueue(late)
    assert fleet.fail_silent_nodes() == []
    assert "node 1 went silent" in failure_of(late)


def test_a_task_for_a_node_never_heard_from_fails(clock: Clock) -> None:
    fleet = Fleet(heartbeat_timeout=3)
    stranger = task(9)
    fleet.enqueue(stranger)
    fleet.fail_silent_nodes()
    assert "node 9 went silent" in failure_of(stranger)


def test_a_node_never_heard_from_is_not_alive_even_just_after_boot(clock: Clock) -> None:
    # "never heard" is None, not a time of 0.0: a machine up for less than the heartbeat
    # timeout (monotonic time 2.0) would have counted such a node alive
    clock.now = 2.0
    fleet = Fleet(heartbeat_timeout=3)
    fleet.enqueue(task(9))
    assert fleet.alive() == []
    assert fleet.fail_silent_nodes() == []  # never alive, so it never fell silent
    assert fleet.heartbeat(9, "h", {})  # its first heartbeat is an arrival


def test_a_node_that_beats_again_is_back(clock: Clock) -> None:
    fleet = Fleet(heartbeat_timeout=3)
    fleet.heartbeat(1, "h", {"partition-id": "0"})
    clock.advance(4)
    fleet.fail_silent_nodes()
    fleet.heartbeat(1, "h2", {"partition-id": "1"})
    assert fleet.alive() == [1]
    assert fleet.node_config(1) == {"partition-id": "1"}
    t = task(1)
    handed_out(fleet, t)
    assert fleet.fail_silent_nodes() == []
    assert t.replies.empty()


# --- long-polls (real threads) ----------------------------------------------------------------


class Poll:
    """``next_task`` in a thread; ``waiting`` is set once the poll has registered."""

    def __init__(self, fleet: Fleet, node: int, wait: float = 30.0) -> None:
        self.waiting = threading.Event()
        self.result: list[QueuedTask | None] = []
        self.thread = threading.Thread(target=self._poll, args=(fleet, node, wait, self._active))
        self.thread.start()
        assert self.waiting.wait(TIMEOUT)

    def _active(self) -> bool:
        self.waiting.set()
        return True

    def _poll(self, fleet: Fleet, node: int, wait: float, active: Callable[[], bool]) -> None:
        self.result.append(fleet.next_task(node, wait, active))

    def outcome(self) -> QueuedTask | None:
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive(), "the poll did not end"
        return self.result[0]


def test_a_waiting_poll_gets_the_task_enqueued_for_its_node() -> None:
    fleet = Fleet()
    poll = Poll(fleet, 1)
    fleet.enqueue(task(2))
    t = task(1)
    fleet.enqueue(t)
    assert poll.outcome() is t and t.with_node


def test_a_newer_poll_of_a_node_supersedes_the_older_one() -> None:
    # a node killed and restarted under its id polls again while its old poll still waits
    fleet = Fleet()
    old = Poll(fleet, 1)
    new = Poll(fleet, 1)
    assert old.outcome() is None
    t = task(1)
    fleet.enqueue(t)
    assert new.outcome() is t


def test_a_poll_whose_caller_stopped_listening_takes_no_task() -> None:
    fleet = Fleet()
    t = task(1)
    fleet.enqueue(t)
    assert fleet.next_task(1, 0, active=lambda: False) is None
    assert fleet.next_task(1, 0) is t


def test_closing_the_fleet_ends_waiting_polls() -> None:
    fleet = Fleet()
    poll = Poll(fleet, 1)
    fleet.close()
    assert poll.outcome() is None
    assert fleet.next_task(1, 30) is None
