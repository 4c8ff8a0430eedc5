"""The fleet across restarts: of a node (it asks for work again) and of the hub (tasks sent again).

Heartbeat timeouts run on a virtual clock, so they are exact and instant. Each test names an
invariant of hub/fleet.py.
"""

from __future__ import annotations

import queue

import numpy as np
import pytest

from pollinate.hub import fleet as fleet_module
from pollinate.hub.fleet import Fleet, QueuedTask, UnknownTask
from pollinate.records import Arrays, Message
from tests.hub.conftest import Clock


def task(node: int, kind: str = "fit", rnd: int = 1, with_node: bool = False) -> QueuedTask:
    message = Message(
        kind,
        task_id=f"r:{rnd}:{kind}:{node}",
        run_id="r",
        round=rnd,
        node_id=node,
        arrays=Arrays({"w": np.zeros(2)}),
    )
    return QueuedTask(message, "apphash", {}, queue.Queue(), with_node=with_node)


def taken(fleet: Fleet, *tasks: QueuedTask) -> None:
    """Enqueue ``tasks`` and let their nodes pull them, as a node's long-poll would."""
    for t in tasks:
        fleet.enqueue(t)
    for t in tasks:
        assert fleet.next_task(t.message.node_id, 0) is t


def pull(fleet: Fleet, node: int) -> QueuedTask | None:
    """The node asks for work (and so says it holds none)."""
    return fleet.next_task(node, 0)


def reply_to(t: QueuedTask) -> Message:
    return t.message.reply(arrays=t.message.arrays, num_examples=1)


# --- a node that asks for work holds none -----------------------------------------------------


def test_a_task_taken_and_not_answered_is_given_again_ahead_of_the_queue(clock: Clock) -> None:
    # the task was lost on its way to the node, or with the node's process (a restart)
    fleet = Fleet(heartbeat_timeout=30)
    fleet.heartbeat(1, "h", {}, session="first")
    fleet.heartbeat(2, "h", {}, session="other")
    took, waiting, others = task(1), task(1, rnd=2), task(2)
    taken(fleet, took, others)
    fleet.enqueue(waiting)

    fleet.heartbeat(1, "h", {}, session="second")  # restarted (heartbeats alone change nothing)
    assert pull(fleet, 1) is took
    assert fleet.claim(1, reply_to(took)) is took
    assert pull(fleet, 1) is waiting  # then the queue, in its order
    assert fleet.claim(2, reply_to(others)) is others  # another node's task stays with it


def test_a_task_answered_is_not_given_again(clock: Clock) -> None:
    fleet = Fleet(heartbeat_timeout=30)
    fleet.heartbeat(1, "h", {})
    t = task(1)
    taken(fleet, t)
    assert fleet.claim(1, reply_to(t)) is t
    assert pull(fleet, 1) is None


def test_a_task_a_node_takes_three_times_without_answering_fails_with_the_reason(
    clock: Clock,
) -> None:
    fleet = Fleet(heartbeat_timeout=30)
    fleet.heartbeat(1, "h", {})
    t = task(1)
    fleet.enqueue(t)
    for _ in range(fleet_module.MAX_TIMES_SENT):
        assert pull(fleet, 1) is t
    assert t.replies.empty()

    assert pull(fleet, 1) is None  # not a fourth time: the node cannot answer it

    failure = t.replies.get_nowait()
    assert failure.task_id == t.message.task_id
    assert failure.error == "node 1 took this task 3 times and never answered"
    with pytest.raises(UnknownTask):
        fleet.claim(1, reply_to(t))


@pytest.mark.parametrize("session", ["first", "second", ""])
def test_heartbeats_give_nothing_again(clock: Clock, session: str) -> None:
    # a node busy with its task heartbeats: that says nothing about what it holds
    fleet = Fleet(heartbeat_timeout=30)
    fleet.heartbeat(1, "h", {}, session="first")
    t = task(1)
    taken(fleet, t)
    fleet.heartbeat(1, "h", {}, session=session)
    assert t.with_node and t.times_sent == 1
    assert fleet.claim(1, reply_to(t)) is t


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
    gone, back = task(4, with_node=True), task(5, with_node=True)
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
    assert t.with_node and fleet.claim(1, reply_to(t)) is t


# --- tasks sent before a hub restart -------------------------------------------------------


def test_a_task_sent_before_a_restart_can_be_answered_before_it_is_pulled(clock: Clock) -> None:
    # the node took it from the previous hub and pushes its reply to this one
    fleet = Fleet(heartbeat_timeout=30)
    fleet.heartbeat(1, "h", {}, session="a")
    t = task(1, with_node=True)
    fleet.enqueue(t)

    assert fleet.claim(1, reply_to(t)) is t

    assert pull(fleet, 1) is None  # answered: no node pulls it again
    with pytest.raises(UnknownTask):
        fleet.claim(1, reply_to(t))


def test_a_task_sent_before_a_restart_stays_queued_until_its_reply_comes(clock: Clock) -> None:
    # the node may never have received it: it can still pull it
    fleet = Fleet(heartbeat_timeout=30)
    fleet.heartbeat(1, "h", {}, session="a")
    t = task(1, with_node=True)
    fleet.enqueue(t)
    assert pull(fleet, 1) is t
    assert pull(fleet, 2) is None
    assert fleet.claim(1, reply_to(t)) is t


def test_a_task_sent_before_a_restart_is_queued_once_when_its_node_restarts(
    clock: Clock,
) -> None:
    fleet = Fleet(heartbeat_timeout=30)
    fleet.heartbeat(1, "h", {}, session="a")
    t = task(1, with_node=True)
    fleet.enqueue(t)
    fleet.heartbeat(1, "h", {}, session="b")
    assert pull(fleet, 1) is t
    assert fleet.claim(1, reply_to(t)) is t
    assert pull(fleet, 1) is None


# --- a reply that could not be recorded ----------------------------------------------------


def test_an_unclaimed_task_can_be_claimed_again(clock: Clock) -> None:
    fleet = Fleet(heartbeat_timeout=30)
    fleet.heartbeat(1, "h", {}, session="a")
    t = task(1)
    taken(fleet, t)
    assert fleet.claim(1, reply_to(t)) is t

    fleet.unclaim(t)  # the hub could not record the reply: the node pushes it again

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
