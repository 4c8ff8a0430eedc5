"""The fleet across restarts: of a node (a new session) and of the hub (tasks sent again).

Heartbeat timeouts run on a virtual clock, so they are exact and instant. Each test names an
invariant of hub/fleet.py.
"""

from __future__ import annotations

import queue

import numpy as np
import pytest

from pollinate.hub import fleet as fleet_module
from pollinate.hub.fleet import Fleet, Refused, Task, UnknownTask
from pollinate.records import Arrays, Message


class Clock:
    """Stands in for the ``time`` module inside the fleet: time moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(fleet_module, "time", clock)
    return clock


def task(node: int, kind: str = "fit", rnd: int = 1, sent: bool = False) -> Task:
    message = Message(
        kind,
        task_id=f"r:{rnd}:{kind}:{node}",
        run_id="r",
        round=rnd,
        node_id=node,
        arrays=Arrays({"w": np.zeros(2)}),
    )
    return Task(message, "apphash", {}, queue.Queue(), sent=sent)


def taken(fleet: Fleet, *tasks: Task) -> None:
    """Enqueue ``tasks`` and let their nodes pull them, as a node's long-poll would."""
    for t in tasks:
        fleet.enqueue(t)
    for t in tasks:
        assert fleet.next_task(t.message.node_id, 0) is t


def queue_of(fleet: Fleet, node: int) -> list[Task]:
    """Everything the node would pull now, in order (pulling it)."""
    pulled = []
    while (t := fleet.next_task(node, 0)) is not None:
        pulled.append(t)
    return pulled


def reply_to(t: Task) -> Message:
    return t.message.reply(arrays=t.message.arrays, num_examples=1)


# --- a restarted node gets the tasks its previous process took -----------------------------


def test_a_new_session_requeues_exactly_the_tasks_the_previous_process_took(
    clock: Clock,
) -> None:
    fleet = Fleet(heartbeat_timeout=30)
    fleet.heartbeat(1, "h", {}, session="first")
    fleet.heartbeat(2, "h", {}, session="other")
    took_fit, took_eval, answered = task(1), task(1, "evaluate"), task(1, rnd=0)
    waiting_a, waiting_b = task(1, rnd=2), task(1, "evaluate", rnd=2)
    others = task(2)
    taken(fleet, answered, took_fit, took_eval, others)
    assert fleet.claim(1, reply_to(answered)) is answered
    fleet.enqueue(waiting_a)
    fleet.enqueue(waiting_b)

    fleet.heartbeat(1, "h", {}, session="second")  # node 1 was killed and started again

    pulled = queue_of(fleet, 1)
    assert set(pulled[:2]) == {took_fit, took_eval}  # what the dead process held comes first
    assert pulled[2:] == [waiting_a, waiting_b]  # then the queue, in its order
    assert queue_of(fleet, 2) == []  # another node's task stays where it is
    assert fleet.claim(2, reply_to(others)) is others
    for t in (took_fit, took_eval):  # the new process answers them
        assert fleet.claim(1, reply_to(t)) is t


def test_a_requeued_task_waits_for_the_new_process_to_take_it(clock: Clock) -> None:
    fleet = Fleet(heartbeat_timeout=30)
    fleet.heartbeat(1, "h", {}, session="first")
    t = task(1)
    taken(fleet, t)
    fleet.heartbeat(1, "h", {}, session="second")
    assert not t.sent
    with pytest.raises(Refused, match="never sent"):
        fleet.claim(1, reply_to(t))  # not until the new process has it
    assert queue_of(fleet, 1) == [t]
    assert fleet.claim(1, reply_to(t)) is t


@pytest.mark.parametrize("session", ["first", ""], ids=["same session", "no session"])
def test_a_heartbeat_of_the_same_process_requeues_nothing(clock: Clock, session: str) -> None:
    fleet = Fleet(heartbeat_timeout=30)
    fleet.heartbeat(1, "h", {}, session="first")
    t = task(1)
    taken(fleet, t)

    fleet.heartbeat(1, "h", {}, session=session)
    fleet.heartbeat(1, "h", {}, session="first")  # a missing session does not forget the old

    assert queue_of(fleet, 1) == []
    assert t.sent
    assert fleet.claim(1, reply_to(t)) is t


def test_a_node_first_seen_without_a_session_requeues_nothing_when_one_appears(
    clock: Clock,
) -> None:
    fleet = Fleet(heartbeat_timeout=30)
    fleet.heartbeat(1, "h", {})
    t = task(1)
    taken(fleet, t)
    fleet.heartbeat(1, "h", {}, session="first")
    assert queue_of(fleet, 1) == []


# --- heartbeat() says when a node arrives ---------------------------------------------------


def test_heartbeat_is_true_for_a_new_node_and_false_for_one_already_alive(clock: Clock) -> None:
    fleet = Fleet(heartbeat_timeout=3)
    assert fleet.heartbeat(1, "h", {}, session="a") is True
    clock.advance(1)
    assert fleet.heartbeat(1, "h", {}, session="a") is False


def test_heartbeat_is_true_for_a_node_back_from_silence(clock: Clock) -> None:
    fleet = Fleet(heartbeat_timeout=3)
    fleet.heartbeat(1, "h", {}, session="a")
    clock.advance(4)
    assert fleet.fail_silent_nodes() == [1]
    assert fleet.heartbeat(1, "h", {}, session="a") is True
    assert fleet.heartbeat(1, "h", {}, session="a") is False


def test_heartbeat_is_true_for_a_restarted_node(clock: Clock) -> None:
    fleet = Fleet(heartbeat_timeout=3)
    fleet.heartbeat(1, "h", {}, session="a")
    assert fleet.heartbeat(1, "h", {}, session="b") is True
    assert fleet.heartbeat(1, "h", {}, session="b") is False


def test_heartbeat_without_a_session_from_a_node_alive_is_no_arrival(clock: Clock) -> None:
    # the node did not restart (it names no new process) and was alive all along
    fleet = Fleet(heartbeat_timeout=3)
    fleet.heartbeat(1, "h", {}, session="a")
    assert fleet.heartbeat(1, "h", {}) is False


def test_heartbeat_is_true_for_a_node_that_had_tasks_before_it_was_heard_from(
    clock: Clock,
) -> None:
    fleet = Fleet(heartbeat_timeout=3)
    fleet.enqueue(task(1))
    assert fleet.alive() == []
    assert fleet.heartbeat(1, "h", {}, session="a") is True


# --- after a hub restart: the nodes it had are presumed alive ------------------------------


def test_presumed_nodes_count_alive_until_the_heartbeat_timeout(clock: Clock) -> None:
    fleet = Fleet(heartbeat_timeout=3)
    fleet.presume_alive([4, 5])
    assert fleet.alive() == [4, 5]
    clock.advance(3)
    assert fleet.alive() == [4, 5]
    clock.advance(0.5)
    assert fleet.alive() == []


def test_a_presumed_node_that_does_not_come_back_fails_its_tasks(clock: Clock) -> None:
    fleet = Fleet(heartbeat_timeout=3)
    fleet.presume_alive([4, 5])
    gone, back = task(4, sent=True), task(5, sent=True)
    fleet.enqueue(gone)
    fleet.enqueue(back)
    clock.advance(2)
    assert fleet.fail_silent_nodes() == []  # within the timeout: nothing fails yet
    assert fleet.heartbeat(5, "h", {}, session="s") is True  # its first beat to this hub
    clock.advance(2)

    assert fleet.fail_silent_nodes() == [4]

    failure = gone.replies.get_nowait()
    assert failure.task_id == gone.message.task_id
    assert failure.error == "node 4 went silent: no heartbeat for over 3s"
    assert back.replies.empty()
    assert fleet.alive() == [5]
    with pytest.raises(UnknownTask):
        fleet.claim(4, reply_to(gone))
    assert fleet.claim(5, reply_to(back)) is back


def test_presuming_a_node_alive_does_not_reset_one_heard_from(clock: Clock) -> None:
    fleet = Fleet(heartbeat_timeout=3)
    fleet.heartbeat(1, "h", {"partition-id": "0"}, session="a")
    t = task(1)
    taken(fleet, t)
    fleet.presume_alive([1])
    assert fleet.node_config(1) == {"partition-id": "0"}
    assert fleet.heartbeat(1, "h", {}, session="a") is False
    assert queue_of(fleet, 1) == []


# --- tasks sent before a hub restart -------------------------------------------------------


def test_a_task_sent_before_a_restart_can_be_answered_before_it_is_pulled(clock: Clock) -> None:
    # the node took it from the previous hub and pushes its reply to this one
    fleet = Fleet(heartbeat_timeout=30)
    fleet.heartbeat(1, "h", {}, session="a")
    t = task(1, sent=True)
    fleet.enqueue(t)

    assert fleet.claim(1, reply_to(t)) is t

    assert queue_of(fleet, 1) == []  # answered: no node pulls it again
    with pytest.raises(UnknownTask):
        fleet.claim(1, reply_to(t))


def test_a_task_sent_before_a_restart_stays_queued_until_its_reply_comes(clock: Clock) -> None:
    # the node may never have received it: it can still pull it
    fleet = Fleet(heartbeat_timeout=30)
    fleet.heartbeat(1, "h", {}, session="a")
    t = task(1, sent=True)
    fleet.enqueue(t)
    assert queue_of(fleet, 1) == [t]
    assert fleet.claim(1, reply_to(t)) is t


def test_a_task_sent_before_a_restart_is_queued_once_when_its_node_restarts(
    clock: Clock,
) -> None:
    fleet = Fleet(heartbeat_timeout=30)
    fleet.heartbeat(1, "h", {}, session="a")
    t = task(1, sent=True)
    fleet.enqueue(t)
    fleet.heartbeat(1, "h", {}, session="b")
    assert queue_of(fleet, 1) == [t]


# --- a reply that could not be recorded ----------------------------------------------------


def test_an_unclaimed_task_can_be_claimed_again(clock: Clock) -> None:
    fleet = Fleet(heartbeat_timeout=30)
    fleet.heartbeat(1, "h", {}, session="a")
    t = task(1)
    taken(fleet, t)
    assert fleet.claim(1, reply_to(t)) is t

    fleet.unclaim(t)  # the hub could not record the reply: the node pushes it again

    assert queue_of(fleet, 1) == []  # pushed again, not trained again
    assert fleet.claim(1, reply_to(t)) is t
    with pytest.raises(UnknownTask):
        fleet.claim(1, reply_to(t))


def test_unclaiming_a_task_whose_round_closed_meanwhile_does_not_reopen_it(
    clock: Clock,
) -> None:
    # accept_reply claims, the disk refuses the reply, and the round's deadline cancels the
    # stage before accept_reply unclaims: the task's round is over, so a late push is refused
    fleet = Fleet(heartbeat_timeout=30)
    fleet.heartbeat(1, "h", {}, session="a")
    t = task(1)
    taken(fleet, t)
    assert fleet.claim(1, reply_to(t)) is t
    fleet.cancel([t.message.task_id])

    fleet.unclaim(t)

    with pytest.raises(UnknownTask):
        fleet.claim(1, reply_to(t))
