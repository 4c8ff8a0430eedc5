"""Untrusted input never crashes the hub nor corrupts a run: it is refused, and life goes on."""

from __future__ import annotations

import dataclasses
import random
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pollinate.records import Message
from pollinate.transport import NODE_ID_HEADER
from pollinate.transport import fleet_pb2 as pb
from pollinate.transport.client import FleetClient, HubRefused, PulledTask
from tests.deployment.apps import write_tiny_app
from tests.deployment.conftest import RUN_TIMEOUT, BackgroundRun, Deployment

GARBAGE = {
    "random bytes": random.Random(0).randbytes(64 * 1024),
    "an HTTP/1.1 request": b"GET / HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n\r\n",
    "an HTTP/2 preface, then junk": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\xff" * 4096,
    "nothing at all": b"",
}


def send_and_hang_up(address: str, payload: bytes) -> None:
    host, _, port = address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        try:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(65536):  # read whatever the hub answers, until it hangs up
                pass
        except OSError:
            pass  # the hub hung up first (reset, broken pipe): a fine answer to garbage


def test_garbage_on_the_hub_ports_leaves_it_serving(deployment: Deployment, tmp_path: Path) -> None:
    app = write_tiny_app(tmp_path / "app")
    hub = deployment.start_hub()
    deployment.start_nodes([app, app])

    for payload in GARBAGE.values():
        send_and_hang_up(deployment.fleet, payload)
        send_and_hang_up(deployment.control, payload)

    assert hub.alive()
    result = deployment.run(app)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.history is not None and result.history[-1]["replies"] == 2


# --- replies with no place, from nodes played by this test ----------------------------------


class FakeNode:
    """A node played in-process over the real fleet API: pulls tasks, answers as told."""

    def __init__(self, address: str, name: str) -> None:
        self.client = FleetClient(address)
        self.client.heartbeat("", {}, name=name)
        self.node_id = self.client.node_id

    def pull(self, run: BackgroundRun) -> PulledTask:
        deadline = time.monotonic() + RUN_TIMEOUT
        while time.monotonic() < deadline and run.process.alive():
            task = self.client.pull_task(0.5)
            if task is not None:
                return task
        raise AssertionError(f"node {self.node_id} got no task")

    def serve(self, run: BackgroundRun) -> None:
        """Answer every task well until the run ends."""
        deadline = time.monotonic() + RUN_TIMEOUT
        while time.monotonic() < deadline and run.process.alive():
            task = self.client.pull_task(0.2)
            if task is not None:
                self.client.push_reply(answer(task.message))


def answer(task: Message) -> Message:
    if task.kind == "fit":
        return task.reply(arrays=task.arrays, num_examples=1)
    return task.reply(loss=0.0, num_examples=1)


@pytest.fixture
def nodes(deployment: Deployment) -> Iterator[tuple[FakeNode, FakeNode]]:
    deployment.start_hub()
    alice, bob = FakeNode(deployment.fleet, "alice"), FakeNode(deployment.fleet, "bob")
    yield alice, bob
    alice.client.close()
    bob.client.close()


def test_replies_with_no_place_are_refused_with_the_reason_and_the_run_goes_on(
    deployment: Deployment, nodes: tuple[FakeNode, FakeNode], tmp_path: Path
) -> None:
    alice, bob = nodes
    run = deployment.start_run(write_tiny_app(tmp_path / "app", **{"num-rounds": 2}))
    task = alice.pull(run).message
    assert (task.kind, task.round, task.node_id) == ("fit", 1, alice.node_id)
    good = answer(task)

    with pytest.raises(HubRefused, match=f"which was given to node {alice.node_id}"):
        bob.client.push_reply(good)  # bob answers alice's task
    unknown = Message("fit", task_id="no-such-task", round=1, node_id=bob.node_id, is_reply=True)
    with pytest.raises(HubRefused, match="'no-such-task', which is unknown or already closed"):
        bob.client.push_reply(unknown)
    wrong_kind = dataclasses.replace(task.reply(loss=0.0, num_examples=1), kind="evaluate")
    with pytest.raises(HubRefused, match="reply does not match task"):
        alice.client.push_reply(wrong_kind)
    [junk] = alice.client.stub.PushReply(
        iter([pb.Chunk(data=b"\x00junk" * 100)]),
        metadata=[(NODE_ID_HEADER, str(alice.node_id))],
        timeout=30,
    )
    assert not junk.accepted and "not a pollinate message" in junk.reason
    alice.client.push_reply(good)
    # the same reply again (as after a lost "accepted"): acknowledged, recorded once
    alice.client.push_reply(good)

    bob_task = bob.pull(run).message
    bob.client.push_reply(answer(bob_task))
    with ThreadPoolExecutor(2) as pool:  # the rest of the run, answered well by both
        serving = [pool.submit(node.serve, run) for node in nodes]
        result = run.finish()
        for future in serving:
            future.result(timeout=RUN_TIMEOUT)

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.history is not None
    for record in result.history[1:]:  # alice's reply pushed twice counts once
        assert (record["replies"], record["failures"]) == (2, 0)


def test_an_update_that_fails_validation_is_rejected_and_the_log_says_why(
    deployment: Deployment, tmp_path: Path
) -> None:
    # partition p adds p + 1 to four entries: update norms 2, 4 and 6; the bound is 5
    app = write_tiny_app(tmp_path / "app", **{"num-rounds": 2, "max-norm": 5.0})
    deployment.start_hub()
    nodes = deployment.start_nodes([app] * 3)
    result = deployment.run(app)

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.history is not None
    for record in result.history[1:]:
        assert (record["replies"], record["failures"], record["rejected"]) == (2, 1, 1)
        [rejection] = record["failed"]
        assert rejection["node_id"] == nodes[2].node_id
    assert "1 rejected" in result.stdout
    log = deployment.cli("log", result.run_id, "--hub", deployment.control).stdout
    assert f"update from node {nodes[2].node_id} rejected: update norm 6 exceeds max_norm=5" in log
    # the two accepted updates moved the model: (1 * 1 + 2 * 2) / 3 per entry and round
    losses = [r["centralized"]["loss"] for r in result.history]
    assert losses[2] - losses[1] == pytest.approx(4 * 5 / 3)
