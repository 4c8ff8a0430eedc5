"""The calls every node makes all the time: heartbeats and long-polls.

A long-poll waits up to 50 s (``node.agent.PULL_WAIT``, the hub holds it up to
``MAX_PULL_WAIT``) and a task queued meanwhile wakes it at once; a node call that ends before
its request came (its node gave up waiting) is counted, and logged as one line with the count,
not one line each.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from pollinate.hub.fleet import QueuedTask
from pollinate.hub.hub import Hub
from pollinate.node.agent import PULL_WAIT
from pollinate.records import Arrays, Message
from pollinate.transport import FLEET_SERVICE
from pollinate.transport.client import FleetClient, PulledTask
from pollinate.transport.fleet_service import MAX_PULL_WAIT, Abandoned
from pollinate.transport.ports import serve

TIMEOUT = 20.0  # well under PULL_WAIT: a poll that was not woken would still be waiting


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[tuple[Hub, str]]:
    hub = Hub(tmp_path / "hub")
    servers = serve(hub, "127.0.0.1:0")
    yield hub, f"127.0.0.1:{servers.port}"
    servers.stop(0)
    hub.close()


def fit_task(node_id: int) -> QueuedTask:
    message = Message(
        "fit", task_id=f"r:1:fit:{node_id}", run_id="r", round=1, node_id=node_id,
        arrays=Arrays({"w": np.ones(3, np.float32)}),
    )  # fmt: skip
    return QueuedTask(message, "apphash", {}, queue.Queue())


def until(condition: object, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_a_long_poll_of_the_nodes_wait_gets_a_task_queued_while_it_waits(
    hub: tuple[Hub, str],
) -> None:
    assert PULL_WAIT <= MAX_PULL_WAIT
    server, address = hub
    client = FleetClient(address)
    pulled: list[PulledTask | None] = []
    try:
        client.heartbeat("apphash", {}, name="alice")
        poll = threading.Thread(target=lambda: pulled.append(client.pull_task(PULL_WAIT)))
        poll.start()
        until(lambda: client.node_id in server.fleet._polls, "the poll to open")
        server.fleet.enqueue(fit_task(client.node_id))

        until(lambda: pulled, "the waiting poll to hand out the task")
        (task,) = pulled
        assert task is not None and task.message.task_id == f"r:1:fit:{client.node_id}"
        assert task.message.arrays is not None
        np.testing.assert_array_equal(task.message.arrays["w"], np.ones(3, np.float32))
        poll.join(TIMEOUT)
    finally:
        client.close()


def test_a_long_poll_with_nothing_queued_ends_with_no_task_at_its_wait(
    hub: tuple[Hub, str],
) -> None:
    _, address = hub
    client = FleetClient(address)
    try:
        client.heartbeat("apphash", {}, name="bob")
        assert client.pull_task(0.2) is None
        assert client.pull_task(0.2) is None  # and the next poll is served as the first
    finally:
        client.close()


def test_node_calls_that_end_without_a_request_are_one_log_line_with_their_count(
    hub: tuple[Hub, str], caplog: pytest.LogCaptureFixture
) -> None:
    _, address = hub
    with grpc.insecure_channel(address) as channel:
        for method in ("Heartbeat", "PullTask") * 10:
            call = channel.stream_unary(f"/{FLEET_SERVICE}/{method}")
            with pytest.raises(grpc.RpcError) as refused:
                call(iter(()), timeout=TIMEOUT)  # headers and the end: no request
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    client = FleetClient(address)
    try:
        client.heartbeat("apphash", {}, name="carol")  # the hub goes on serving
        assert client.node_id > 0
    finally:
        client.close()
    lines = [r.getMessage() for r in caplog.records if "without a request" in r.getMessage()]
    assert len(lines) == 1, lines  # the first at once; the rest wait for the next minute
    assert lines[0].startswith("1 node call(s) (the latest a Heartbeat)")


def test_the_count_of_abandoned_calls_is_logged_at_most_once_per_period(
    caplog: pytest.LogCaptureFixture,
) -> None:
    abandoned = Abandoned(every=0.0)  # every call past the period: each is a line
    with caplog.at_level(logging.WARNING, "pollinate.transport"):
        abandoned.note("Heartbeat")
        abandoned.note("PullTask")
    assert len(caplog.records) == 2
    assert abandoned.total == 2 and abandoned.count == 0

    caplog.clear()
    quiet = Abandoned(every=3600.0)
    with caplog.at_level(logging.WARNING, "pollinate.transport"):
        for _ in range(1000):
            quiet.note("Heartbeat")
    assert len(caplog.records) == 1  # the first; 999 wait for the line of the next hour
    assert quiet.total == 1000 and quiet.count == 999
