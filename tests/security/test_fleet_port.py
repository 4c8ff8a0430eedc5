"""No node and no stranger can starve or stall the hub's ports (issue 13, "Starve", "Stall").

Measured before the hub's servers moved to grpc.aio: 300 calls that sent headers and never a
message filled the fleet port's 256 worker threads (nodes went "silent", the run failed); 20
such calls blocked the enrolment port (8 threads) and 20 the control port (16 threads); a reply
that declared 4 GiB of arrays and then held its stream held the hub's decoding budget, so every
other reply waited; garbage protobuf printed a six-line traceback each; and after one such
stream the hub ignored SIGTERM. Here each attack runs against a real hub process on 127.0.0.1
while an honest run goes on, and the run ends with the history of an unattacked run.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from pollinate import wire
from pollinate.loop.history import WALL_TIMES
from pollinate.records import Arrays
from pollinate.security.guest import ENROL_SERVER_NAME, GUEST_CERT_PEM, GUEST_KEY_PEM
from pollinate.transport import CHUNK_BYTES, NODE_ID_HEADER
from pollinate.transport import fleet_pb2 as pb
from pollinate.transport.client import ControlClient
from tests.deployment.apps import write_tiny_app
from tests.deployment.conftest import RUN_TIMEOUT, Deployment, wait_for
from tests.deployment.conftest import deployment as deployment  # the fixture
from tests.deployment.test_bad_input import FakeNode, answer
from tests.deployment.test_large_model import start_tls_hub, start_tls_node

MALLORY = 4242  # a node id nobody was given
CALL_TIMEOUT = 30.0  # a control call during an attack: generous, the machine may be loaded


class IdleCalls:
    """Calls that send their headers and never a message, held open until ``close``."""

    def __init__(self) -> None:
        self._release = threading.Event()
        self._channels: list[grpc.Channel] = []
        self._calls: list[Any] = []

    def open(
        self,
        address: str,
        method: str,
        count: int,
        node_id: int | None = None,
        root_pem: bytes | None = None,
    ) -> None:
        """``count`` calls of ``method``; over TLS as a guest that trusts ``root_pem`` if
        given (a stranger who fetched the hub's enrolment certificate, as anyone can)."""
        metadata = [(NODE_ID_HEADER, str(node_id))] if node_id is not None else []
        # a channel of its own per 20 calls: separate connections, as separate attackers use
        options = [("grpc.use_local_subchannel_pool", 1)]
        for start in range(0, count, 20):
            if root_pem is None:
                channel = grpc.insecure_channel(address, options)
            else:
                guest = grpc.ssl_channel_credentials(root_pem, GUEST_KEY_PEM, GUEST_CERT_PEM)
                override = ("grpc.ssl_target_name_override", ENROL_SERVER_NAME)
                channel = grpc.secure_channel(address, guest, [*options, override])
            self._channels.append(channel)
            call = channel.stream_unary(method)
            for _ in range(min(20, count - start)):
                self._calls.append(call.future(self._nothing(), metadata=metadata))

    def _nothing(self) -> Iterator[bytes]:
        self._release.wait(RUN_TIMEOUT * 3)
        return
        yield b""

    def refused(self) -> int:
        """Calls the hub ended with RESOURCE_EXHAUSTED (over a peer's limit)."""
        done = [call for call in self._calls if call.done()]
        return sum(call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for call in done)

    def close(self) -> None:
        self._release.set()
        for call in self._calls:
            call.cancel()
        for channel in self._channels:
            channel.close()


@pytest.fixture
def idle_calls() -> Iterator[IdleCalls]:
    calls = IdleCalls()
    yield calls
    calls.close()


class ControlWatch:
    """Lists the hub's runs over and over from a thread; every call must succeed."""

    def __init__(self, address: str) -> None:
        self.client = ControlClient(address)
        self.answered, self.failures, self.slowest = 0, [], 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(0.2):
            started = time.monotonic()
            try:
                self.client.stub.ListRuns(pb.ListRunsRequest(), timeout=CALL_TIMEOUT)
                self.answered += 1
                self.slowest = max(self.slowest, time.monotonic() - started)
            except grpc.RpcError as exc:
                self.failures.append(f"{exc.code()}: {exc.details()}")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(CALL_TIMEOUT + 5)
        self.client.close()


def comparable(history: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """A history without what differs between two runs of the same seed: how long it took."""
    assert history is not None
    return [{k: v for k, v in record.items() if k not in WALL_TIMES} for record in history]


def test_300_idle_fleet_calls_and_20_idle_control_calls_starve_no_run(
    deployment: Deployment, tmp_path: Path, idle_calls: IdleCalls
) -> None:
    app = write_tiny_app(tmp_path / "app", **{"num-rounds": 3})
    deployment.start_hub()
    deployment.start_nodes([app, app])
    calm = deployment.run(app)
    assert calm.returncode == 0, calm.stdout + calm.stderr

    fleet = "/pollinate.v1.Fleet/"
    idle_calls.open(deployment.fleet, fleet + "Heartbeat", 100)
    idle_calls.open(deployment.fleet, fleet + "PullTask", 100)
    # one node's uploads (not in the fleet: a sampled node that never answers fails its task)
    idle_calls.open(deployment.fleet, fleet + "PushReply", 100, node_id=MALLORY)
    idle_calls.open(deployment.control, "/pollinate.v1.Control/ListRuns", 20)
    followers = ControlClient(deployment.control)
    with ThreadPoolExecutor(20) as pool:
        follows = [
            pool.submit(lambda: list(followers.follow_log(calm.run_id, follow=True)))
            for _ in range(20)
        ]
        watch = ControlWatch(deployment.control)
        try:
            attacked = deployment.run(app)
        finally:
            watch.stop()
        for follow in follows:  # the followers of a finished run got its log and ended
            assert follow.result(timeout=CALL_TIMEOUT)
    followers.close()

    assert attacked.returncode == 0, attacked.stdout + attacked.stderr
    assert comparable(attacked.history) == comparable(calm.history)
    assert watch.failures == [] and watch.answered > 0
    print(f"measured: {watch.answered} control calls answered, slowest {watch.slowest:.3f} s")
    # mallory may hold a few uploads open; the rest were refused at once, not queued
    wait_for(lambda: idle_calls.refused() >= 90, "the hub to refuse mallory's extra calls")


def test_20_idle_enrolment_calls_do_not_stop_a_node_enrolling(
    deployment: Deployment, tmp_path: Path, idle_calls: IdleCalls
) -> None:
    app = write_tiny_app(tmp_path / "app", **{"num-rounds": 1})
    start_tls_hub(deployment)
    # strangers who trust the enrolment certificate (as anyone can), each on its own connection
    pinned = (deployment.directory / "hub-data" / "enrol" / "enrol.pem").read_bytes()
    for _ in range(20):
        idle_calls.open(deployment.fleet, "/pollinate.v1.Fleet/Enrol", 1, root_pem=pinned)
    for partition in (0, 1):
        start_tls_node(deployment, app, partition)
    result = deployment.run(app)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.history is not None and result.history[-1]["replies"] == 2


def held_upload(first: bytes, release: threading.Event) -> Iterator[Any]:
    yield pb.Chunk(data=first)
    release.wait(RUN_TIMEOUT)


def test_a_reply_is_refused_from_its_header_while_its_sender_still_holds_the_stream(
    deployment: Deployment, tmp_path: Path
) -> None:
    app = write_tiny_app(tmp_path / "app", **{"num-rounds": 2})
    deployment.start_hub()
    alice, bob = FakeNode(deployment.fleet, "alice"), FakeNode(deployment.fleet, "bob")
    run = deployment.start_run(app)
    task = alice.pull(run).message
    # 4 GiB declared, not one byte of it made: a view of a single float32
    huge = Arrays({"w": np.broadcast_to(np.float32(0), (1 << 30,))})
    head = bytes(next(iter(wire.iter_encode(task.reply(arrays=huge, num_examples=1)))))
    assert len(head) < CHUNK_BYTES

    release = threading.Event()
    try:
        for sender in (alice, bob):  # alice's own task, then bob answering alice's task
            started = time.monotonic()
            [ack] = sender.client.stub.PushReply(
                held_upload(head, release),
                metadata=[(NODE_ID_HEADER, str(sender.node_id))],
                timeout=CALL_TIMEOUT,
            )
            assert not ack.accepted
            expected = "may hold at most" if sender is alice else "which was given to node"
            assert expected in ack.reason, ack.reason
            print(f"measured: refused in {time.monotonic() - started:.3f} s: {ack.reason}")
    finally:
        release.set()

    alice.client.push_reply(answer(task))
    with ThreadPoolExecutor(2) as pool:
        serving = [pool.submit(node.serve, run) for node in (alice, bob)]
        result = run.finish()
        for future in serving:
            future.result(timeout=RUN_TIMEOUT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.history is not None
    assert [(r["replies"], r["failures"]) for r in result.history[1:]] == [(2, 0), (2, 0)]


def test_garbage_requests_are_one_line_each_and_sigterm_stops_a_hub_with_streams_open(
    deployment: Deployment, tmp_path: Path, idle_calls: IdleCalls
) -> None:
    hub = deployment.start_hub()
    mallory = FakeNode(deployment.fleet, "mallory")
    channel = grpc.insecure_channel(deployment.fleet)
    raw_heartbeat = channel.unary_unary("/pollinate.v1.Fleet/Heartbeat")
    raw_push = channel.stream_stream("/pollinate.v1.Fleet/PushReply")
    metadata = [(NODE_ID_HEADER, str(mallory.node_id))]
    for _ in range(10):
        with pytest.raises(grpc.RpcError) as refused:
            raw_heartbeat(b"\xff\xff\xff\xff not protobuf", timeout=CALL_TIMEOUT)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as refused:
            list(raw_push(iter([b"\xff\xff\xff\xff"]), metadata=metadata, timeout=CALL_TIMEOUT))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    channel.close()
    wait_for(lambda: hub.stderr.count("is not a valid") >= 20, "a line for each garbage call")
    assert "Traceback" not in hub.stderr and "Exception deserializing" not in hub.stderr

    # streams left open: uploads that never finish, long-polls, a half-sent unary call
    idle_calls.open(deployment.fleet, "/pollinate.v1.Fleet/PushReply", 4, mallory.node_id)
    idle_calls.open(deployment.fleet, "/pollinate.v1.Fleet/PullTask", 20)
    hub.popen.send_signal(signal.SIGTERM)
    started = time.monotonic()
    hub.popen.wait(timeout=RUN_TIMEOUT)
    print(f"measured: the hub exited {time.monotonic() - started:.1f} s after SIGTERM")
    assert hub.popen.returncode is not None
