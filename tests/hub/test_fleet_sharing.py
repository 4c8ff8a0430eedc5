"""A node shared by several runs: it takes their tasks round-robin across the runs, and a node
with GPUs holds at most as many tasks at once as it has GPUs."""

from __future__ import annotations

from pollinate.hub.fleet import MAX_RUNS_REMEMBERED, Fleet, QueuedTask
from tests.hub.conftest import Clock
from tests.hub.test_fleet import reply_to, task


def takes(fleet: Fleet, node: int, count: int) -> list[str]:
    """The runs of the next ``count`` tasks the node takes, answering each before the next (as
    a node does)."""
    runs = []
    for _ in range(count):
        taken = fleet.next_task(node, 0)
        assert taken is not None
        runs.append(taken.message.run_id)
        fleet.settle(fleet.claim(node, reply_to(taken)))
    return runs


def test_a_node_serving_several_runs_takes_their_tasks_in_turn(clock: Clock) -> None:
    fleet = Fleet()
    fleet.heartbeat(1, "h", {})
    for rnd in (1, 2, 3):  # run a queues three tasks before run b queues any
        fleet.enqueue(task(1, rnd=rnd, run="a"))
    for rnd in (1, 2):
        fleet.enqueue(task(1, rnd=rnd, run="b"))
    fleet.enqueue(task(1, run="c"))
    assert takes(fleet, 1, 6) == ["a", "b", "c", "a", "b", "a"]


def test_a_run_that_comes_later_takes_its_turn_before_one_served_already(clock: Clock) -> None:
    fleet = Fleet()
    fleet.heartbeat(1, "h", {})
    fleet.enqueue(task(1, rnd=1, run="a"))
    assert takes(fleet, 1, 1) == ["a"]
    fleet.enqueue(task(1, rnd=2, run="a"))
    fleet.enqueue(task(1, run="b"))
    assert takes(fleet, 1, 2) == ["b", "a"]


def test_a_task_the_node_must_take_again_comes_before_any_turn(clock: Clock) -> None:
    fleet = Fleet()
    fleet.heartbeat(1, "h", {})
    lost = task(1, run="b")
    fleet.enqueue(task(1, run="a"))
    fleet.enqueue(lost)
    assert takes(fleet, 1, 1) == ["a"]
    assert fleet.next_task(1, 0) is lost  # taken, never answered: lost on the way
    fleet.enqueue(task(1, rnd=2, run="a"))
    assert fleet.next_task(1, 0) is lost  # a new poll: sent again, ahead of run a's turn


def test_a_nodes_memory_of_turns_is_bounded(clock: Clock) -> None:
    fleet = Fleet()
    fleet.heartbeat(1, "h", {})
    for n in range(MAX_RUNS_REMEMBERED + 10):
        fleet.enqueue(task(1, run=f"r{n}"))
        takes(fleet, 1, 1)
    assert len(fleet._nodes[1].served) <= MAX_RUNS_REMEMBERED


def test_a_node_with_one_gpu_holds_one_task_at_a_time(clock: Clock) -> None:
    fleet = Fleet()
    fleet.heartbeat(1, "h", {}, resources={"gpus": "1"})
    first, second = task(1, run="a"), task(1, run="b")
    fleet.enqueue(first)
    fleet.enqueue(second)
    ticket = fleet.open_poll(1)
    assert fleet.take(1, ticket) is first
    # a node that pulls again without answering (and without a new poll, which would take
    # the first back) is given nothing more while it holds its one GPU's task
    assert fleet.take(1, ticket) is None
    fleet.settle(fleet.claim(1, reply_to(first)))
    assert fleet.take(1, ticket) is second


def test_a_node_with_two_gpus_holds_two_and_a_node_without_is_not_bounded(clock: Clock) -> None:
    fleet = Fleet()
    fleet.heartbeat(1, "h", {}, resources={"gpus": "2"})
    fleet.heartbeat(2, "h", {}, resources={"gpus": "0"})
    tasks: dict[int, list[QueuedTask]] = {
        node: [task(node, run=r) for r in "abc"] for node in (1, 2)
    }
    for queued in tasks.values():
        for t in queued:
            fleet.enqueue(t)
    tickets = {node: fleet.open_poll(node) for node in (1, 2)}
    assert [fleet.take(1, tickets[1]) for _ in range(3)] == [*tasks[1][:2], None]
    assert [fleet.take(2, tickets[2]) for _ in range(3)] == tasks[2]
