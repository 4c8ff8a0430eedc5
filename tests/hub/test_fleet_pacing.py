"""Heartbeats are paced over a large fleet, and the heartbeat timeout grows with the pace.

``Fleet.interval``: a fleet would beat at most ``HEARTBEATS_PER_SECOND`` times a second;
``Fleet.timeout``: a node is silent after ``BEATS_PER_TIMEOUT`` paced intervals if that is
longer than the hub's timeout, so a node of a paced fleet may still miss two beats.
"""

from __future__ import annotations

import logging
import queue

import numpy as np
import pytest

from pollinate.hub.fleet import (
    BEATS_PER_TIMEOUT,
    HEARTBEATS_PER_SECOND,
    SILENT_LINES,
    Fleet,
    QueuedTask,
)
from pollinate.records import Arrays, Message
from tests.hub.conftest import Clock

LARGE = 10_000


def fit_task(node_id: int) -> QueuedTask:
    message = Message(
        "fit", task_id=f"r:1:fit:{node_id}", run_id="r", round=1, node_id=node_id,
        arrays=Arrays({"w": np.zeros(2)}),
    )  # fmt: skip
    return QueuedTask(message, "apphash", {}, queue.Queue())


def test_a_small_fleet_beats_at_the_hubs_interval_within_the_hubs_timeout(clock: Clock) -> None:
    fleet = Fleet(heartbeat_timeout=30)
    for node_id in range(1, 101):
        fleet.heartbeat(node_id, "apphash", {})
    assert (fleet.interval(5.0), fleet.timeout()) == (5.0, 30.0)
    clock.advance(31)
    assert fleet.alive() == []


def test_a_large_fleet_is_paced_and_its_nodes_may_miss_two_paced_beats(clock: Clock) -> None:
    fleet = Fleet(heartbeat_timeout=30)
    for node_id in range(1, LARGE + 1):
        fleet.heartbeat(node_id, "apphash", {})
    interval = fleet.interval(5.0)
    assert interval == LARGE / HEARTBEATS_PER_SECOND == 40.0
    assert fleet.timeout() == BEATS_PER_TIMEOUT * interval == 120.0
    task = fit_task(7)
    fleet.enqueue(task)
    assert fleet.take(7, fleet.open_poll(7)) is task

    clock.advance(2 * interval + 5)  # node 7 missed two beats; the others beat on
    for node_id in range(8, LARGE + 1):
        fleet.heartbeat(node_id, "apphash", {})
    assert fleet.fail_silent_nodes() == []
    assert 7 in fleet.alive()

    clock.advance(interval)  # 125 s of silence: past three paced beats
    silent = fleet.fail_silent_nodes()
    assert 7 in silent and 8 not in silent
    failed = task.replies.get_nowait()
    assert failed.error is not None and "no heartbeat for over 120s" in failed.error


def test_nodes_falling_silent_together_are_one_log_line_and_a_few_are_one_each(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    fleet = Fleet(heartbeat_timeout=3)
    for node_id in range(1, 101):
        fleet.heartbeat(node_id, "apphash", {})
    clock.advance(4)
    with caplog.at_level(logging.WARNING, "pollinate.hub"):
        assert len(fleet.fail_silent_nodes()) == 100
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("100 nodes went silent (no heartbeat for over 3s)")
    assert line.endswith(f"nodes 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 and {100 - SILENT_LINES} more")

    caplog.clear()
    fleet.heartbeat(5, "apphash", {})
    clock.advance(4)
    with caplog.at_level(logging.WARNING, "pollinate.hub"):
        assert fleet.fail_silent_nodes() == [5]
    assert [r.getMessage() for r in caplog.records] == ["node 5 went silent; its tasks failed"]
