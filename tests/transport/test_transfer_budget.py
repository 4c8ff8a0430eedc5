"""The hub takes in a few uploads of replies at once, each straight into its journal file,
and sends a few tasks' arrays at once (``guards.TransferBudget``), so its memory does not
grow with the number of nodes: a node whose upload has no place yet waits with its header
sent, and sends its arrays when the hub says so; a node whose download has no place yet has
its task's first chunk and waits for the rest.

The first tests drive the budget alone on an event loop; the others run a real hub over real
gRPC on 127.0.0.1, with nodes pushing replies of a known size to a run loop that takes them
only when the test lets it, and a client against a hub played by the test.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from pollinate import wire
from pollinate.hub.grid import HubGrid, RunStopped
from pollinate.hub.hub import Hub
from pollinate.records import Arrays, Message
from pollinate.transport import FLEET_SERVICE as FLEET
from pollinate.transport import NODE_ID_HEADER, data_chunk, guards
from pollinate.transport import fleet_pb2 as pb
from pollinate.transport.client import FleetClient, HubRefused
from pollinate.transport.guards import Lease, TransferBudget
from pollinate.transport.ports import HubPorts, serve

TIMEOUT = 60.0  # a bound on every wait below, never a measure: the machine may be loaded


# --- the budget alone ---------------------------------------------------------------------


class Replies:
    """Uploads of replies asking one budget for a place, each from its own peer unless told."""

    def __init__(self, budget: TransferBudget) -> None:
        self.budget = budget
        self.leases: dict[str, Lease] = {}
        self.tasks: list[asyncio.Task[None]] = []

    def ask(self, name: str, nbytes: int, peer: str | None = None) -> None:
        async def admit() -> None:
            self.leases[name] = await self.budget.admit(peer or name, nbytes)

        self.tasks.append(asyncio.create_task(admit()))

    def admitted(self) -> set[str]:
        return set(self.leases)


async def settled() -> None:
    for _ in range(10):  # let every runnable task take its turn
        await asyncio.sleep(0)


def test_at_most_the_budgets_uploads_arrive_at_once_and_the_next_waits_its_turn() -> None:
    async def scenario() -> None:
        replies = Replies(TransferBudget(2, floor=0))
        for name in "abc":
            replies.ask(name, 100)
        await settled()
        assert replies.admitted() == {"a", "b"}
        replies.leases["a"].release()
        await settled()
        assert replies.admitted() == {"a", "b", "c"}
        assert (replies.budget.peak, replies.budget.peak_bytes) == (2, 200)

    asyncio.run(scenario())


def test_small_uploads_under_the_floor_arrive_side_by_side_whatever_their_number() -> None:
    async def scenario() -> None:
        replies = Replies(TransferBudget(2, floor=1000))
        for index in range(10):
            replies.ask(f"r{index}", 100)
        replies.ask("large", 500)
        await settled()
        assert len(replies.admitted()) == 10 and "large" not in replies.admitted()
        for index in range(5):
            replies.leases[f"r{index}"].release()
        await settled()
        assert "large" in replies.admitted()

    asyncio.run(scenario())


def test_first_come_first_served_a_large_reply_is_not_overtaken_by_small_ones() -> None:
    async def scenario() -> None:
        replies = Replies(TransferBudget(1, floor=150))
        replies.ask("first", 100)
        await settled()
        replies.ask("large", 1000)
        replies.ask("small", 10)  # would fit under the floor, but comes after "large"
        await settled()
        assert replies.admitted() == {"first"}
        replies.leases["first"].release()
        await settled()
        assert replies.admitted() == {"first", "large"}

    asyncio.run(scenario())


def test_a_node_holds_one_place_at_a_time_and_others_pass_its_second_reply() -> None:
    async def scenario() -> None:
        replies = Replies(TransferBudget(3, floor=0))
        replies.ask("one", 100, peer="node 1")
        replies.ask("two", 100, peer="node 1")
        replies.ask("other", 100, peer="node 2")
        await settled()
        assert replies.admitted() == {"one", "other"}
        replies.leases["one"].release()
        await settled()
        assert replies.admitted() == {"one", "two", "other"}

    asyncio.run(scenario())


def test_a_release_from_another_thread_counts_once_and_an_empty_reply_never_waits() -> None:
    async def scenario() -> None:
        budget = TransferBudget(1, floor=0)
        replies = Replies(budget)
        replies.ask("held", 100)
        await settled()
        replies.ask("next", 100)
        replies.ask("empty", 0)
        await settled()
        assert replies.admitted() == {"held", "empty"}
        lease = replies.leases["held"]
        releasing = [threading.Thread(target=lease.release) for _ in range(3)]
        for thread in releasing:
            thread.start()
        for thread in releasing:
            thread.join()
        for _ in range(1000):
            if "next" in replies.admitted():
                break
            await asyncio.sleep(0.01)
        assert replies.admitted() == {"held", "next", "empty"}
        assert budget.held == 1 and budget.held_bytes == 100

    asyncio.run(scenario())


def test_an_upload_that_leaves_while_it_waits_gives_up_its_turn() -> None:
    async def scenario() -> None:
        replies = Replies(TransferBudget(1, floor=0))
        replies.ask("held", 100)
        await settled()
        replies.ask("gone", 100)
        replies.ask("next", 100)
        await settled()
        replies.tasks[1].cancel()  # its call ended
        replies.leases["held"].release()
        await settled()
        assert replies.admitted() == {"held", "next"}
        assert replies.budget.waiting == 0

    asyncio.run(scenario())


# --- a real hub, real gRPC ----------------------------------------------------------------

REPLY_FLOATS = 1 << 18  # 1 MiB of float32: several chunks each
REPLY_BYTES = 4 * REPLY_FLOATS


@dataclass
class Deployment:
    hub: Hub
    ports: HubPorts
    budget: TransferBudget
    downloads: TransferBudget
    grid: HubGrid
    clients: list[FleetClient] = field(default_factory=list)
    loops: list[Loop] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.ports.port}"

    def node(self, name: str) -> FleetClient:
        client = FleetClient(self.address)
        client.heartbeat("apphash", {}, name=name)
        self.clients.append(client)
        return client

    def loop(self, tasks: list[Message]) -> Loop:
        loop = Loop(self.grid, tasks)
        loop.start()
        self.loops.append(loop)
        return loop

    def task(self, client: FleetClient, index: int, floats: int = REPLY_FLOATS) -> Message:
        assert client.node_id is not None
        arrays = Arrays({"w": np.zeros(floats, np.float32)})
        return Message(
            "fit", task_id=f"run:1:fit:{index}", run_id="run", round=1, node_id=client.node_id,
            arrays=arrays,
        )  # fmt: skip


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    hub = Hub(tmp_path / "hub")
    ports = serve(hub, "127.0.0.1:0", control=False)
    assert ports.fleet is not None
    budget = ports.fleet.uploads = TransferBudget(2, floor=0)
    downloads = ports.fleet.downloads = TransferBudget(2, floor=0)
    grid = HubGrid(hub.fleet, hub.journal, "run", "apphash", {})
    deployment = Deployment(hub, ports, budget, downloads, grid)
    yield deployment
    grid.close()
    for loop in deployment.loops:
        loop.join(TIMEOUT)  # its dispatch ends, and closes its tasks, before the hub closes
    for client in deployment.clients:
        client.close()
    hub.close()
    ports.stop()
    hub.state.close()


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.01)


class Answering(threading.Thread):
    """A node that pulls its one task and pushes its reply (the task's arrays, plus one)."""

    def __init__(self, client: FleetClient) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.outcome: str | BaseException | None = None

    def run(self) -> None:
        try:
            deadline = time.monotonic() + TIMEOUT
            while (task := self.client.pull_task(0.5)) is None:
                assert time.monotonic() < deadline, "no task came"
            update = Arrays({"w": task.message.arrays["w"] + 1})
            self.client.push_reply(task.message.reply(arrays=update, num_examples=1))
            self.outcome = "accepted"
        except BaseException as exc:  # the test reports it
            self.outcome = exc


class Loop(threading.Thread):
    """A run loop: takes the dispatch's replies as they come, into ``replies``."""

    def __init__(self, grid: HubGrid, tasks: list[Message]) -> None:
        super().__init__(daemon=True)
        self.grid, self.tasks = grid, tasks
        self.replies: queue.Queue[Message | None] = queue.Queue()

    def run(self) -> None:
        try:
            for reply in self.grid.dispatch(self.tasks, timeout=TIMEOUT):
                self.replies.put(reply)
        except RunStopped:  # the test closed the grid
            pass
        self.replies.put(None)


def test_every_reply_is_taken_in_while_the_loop_waits_and_at_most_the_budgets_uploads_at_once(
    deployment: Deployment,
) -> None:
    budget, count = deployment.budget, 6
    clients = [deployment.node(f"node-{index}") for index in range(count)]
    tasks = [deployment.task(client, index) for index, client in enumerate(clients)]
    nodes = [Answering(client) for client in clients]
    for node in nodes:
        node.start()

    dispatch = deployment.grid.dispatch(tasks, timeout=TIMEOUT)
    first = next(dispatch)
    # the loop holds one reply and asks for no other: the hub still takes every one in,
    # into its file, never more than two uploads at once
    for node in nodes:
        node.join(TIMEOUT)
        assert node.outcome == "accepted", node.outcome
    assert (budget.peak, budget.held, budget.waiting) == (2, 0, 0)
    assert budget.peak_bytes == 2 * REPLY_BYTES

    replies = [first, *dispatch]
    assert sorted(r.task_id for r in replies) == sorted(task.task_id for task in tasks)
    for reply in replies:  # each as its node sent it: the task's arrays, plus one
        assert reply.error is None, reply.error
        np.testing.assert_array_equal(reply.arrays["w"], np.ones(REPLY_FLOATS, np.float32))
        assert not reply.arrays["w"].flags.writeable  # a view of the file the journal keeps


def test_every_node_gets_its_task_whole_with_at_most_the_budgets_downloads_at_once(
    deployment: Deployment,
) -> None:
    downloads, count = deployment.downloads, 6
    clients = [deployment.node(f"node-{index}") for index in range(count)]
    tasks = [deployment.task(client, index) for index, client in enumerate(clients)]
    loop = deployment.loop(tasks)
    with ThreadPoolExecutor(count) as pool:
        pulled = list(pool.map(lambda client: client.pull_task(TIMEOUT), clients))
    for task, got in zip(tasks, pulled, strict=True):
        assert got is not None and got.message.task_id == task.task_id
        np.testing.assert_array_equal(got.message.arrays["w"], task.arrays["w"])
    assert (downloads.peak, downloads.held, downloads.waiting) == (2, 0, 0)
    assert downloads.peak_bytes == 2 * REPLY_BYTES
    deployment.grid.close()
    assert loop.replies.get(timeout=TIMEOUT) is None


def test_a_node_that_does_not_read_its_download_is_cut_and_the_next_node_gets_its_task(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(guards, "IDLE_SECONDS", 1.0)  # what a chunk may take to be read
    deployment.downloads.at_once = 1
    mallory, alice = deployment.node("mallory"), deployment.node("alice")
    # mallory's task is larger than what HTTP/2 windows and socket buffers take in unread
    tasks = [deployment.task(mallory, 0, floats=16 << 20), deployment.task(alice, 1)]
    loop = deployment.loop(tasks)
    stream = mallory.stub.PullTask(
        pb.PullTaskRequest(wait_seconds=TIMEOUT),
        metadata=[(NODE_ID_HEADER, str(mallory.node_id))],
        timeout=TIMEOUT,
    )
    try:
        next(stream)  # the task's first chunk; then mallory reads no more
        wait_until(lambda: deployment.downloads.held == 1, "mallory's download to have a place")
        task = alice.pull_task(TIMEOUT)  # waits its turn, then comes whole
        assert task is not None and task.message.task_id == tasks[1].task_id
        np.testing.assert_array_equal(task.message.arrays["w"], tasks[1].arrays["w"])
        with pytest.raises(grpc.RpcError) as cut:  # mallory reads again: her call has ended
            for _ in stream:
                pass
        assert cut.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "download of its task stalled for 1s" in str(cut.value.details())
        assert (deployment.downloads.peak, deployment.downloads.held) == (1, 0)
    finally:
        stream.cancel()
        deployment.grid.close()
    assert loop.replies.get(timeout=TIMEOUT) is None
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_a_node_that_hangs_up_during_its_download_ends_its_call_without_a_traceback(
    deployment: Deployment, caplog: pytest.LogCaptureFixture
) -> None:
    mallory = deployment.node("mallory")
    loop = deployment.loop([deployment.task(mallory, 0, floats=16 << 20)])
    stream = mallory.stub.PullTask(
        pb.PullTaskRequest(wait_seconds=TIMEOUT),
        metadata=[(NODE_ID_HEADER, str(mallory.node_id))],
        timeout=TIMEOUT,
    )
    next(stream)
    wait_until(lambda: deployment.downloads.held == 1, "mallory's download to have a place")
    stream.cancel()
    wait_until(lambda: deployment.downloads.held == 0, "her place to come back")
    deployment.grid.close()
    assert loop.replies.get(timeout=TIMEOUT) is None
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_a_reply_larger_than_the_hub_holds_for_one_is_refused_with_the_reason(
    deployment: Deployment,
) -> None:
    client = deployment.node("node-0")
    fleet = deployment.ports.fleet
    assert fleet is not None
    fleet.limits = wire.Limits(max_total_array_bytes=REPLY_BYTES // 2)
    loop = deployment.loop([deployment.task(client, 0)])
    node = Answering(client)
    node.start()
    node.join(TIMEOUT)
    assert isinstance(node.outcome, HubRefused), node.outcome
    assert "max_total_array_bytes" in str(node.outcome)
    assert (deployment.budget.peak, deployment.budget.held) == (0, 0)
    assert not list((deployment.hub.state.data_dir / "runs").rglob("*.pln*"))  # no file made
    deployment.grid.close()
    assert loop.replies.get(timeout=TIMEOUT) is None  # no reply came


def stalled_upload(reply: Message, release: threading.Event) -> Iterator[Any]:
    """The reply's header and its first array chunk at once, without waiting to be told,
    then nothing until ``release``."""
    chunks = wire.iter_encode(reply, 1 << 16)
    yield pb.Chunk(data=bytes(next(chunks)))
    yield pb.Chunk(data=bytes(next(chunks)))
    release.wait(TIMEOUT)


def test_a_node_that_stalls_with_a_place_is_cut_and_the_others_replies_come_in(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(guards, "IDLE_SECONDS", 1.0)  # what an admitted upload may take, plus
    monkeypatch.setattr(guards, "SLOWEST_BYTES_PER_SECOND", 1 << 30)  # its bytes at 1 GiB/s
    deployment.budget.at_once = 1
    mallory, alice = deployment.node("mallory"), deployment.node("alice")
    tasks = [deployment.task(mallory, 0), deployment.task(alice, 1)]
    loop = deployment.loop(tasks)
    task = mallory.pull_task(TIMEOUT)
    assert task is not None
    release = threading.Event()
    answers = mallory.stub.PushReply(
        stalled_upload(task.message.reply(arrays=task.message.arrays), release),
        metadata=[(NODE_ID_HEADER, str(mallory.node_id))],
        timeout=TIMEOUT,
    )
    try:
        assert next(answers).send_arrays  # mallory has the place
        honest = Answering(alice)
        honest.start()
        reply = loop.replies.get(timeout=TIMEOUT)
        assert reply is not None and reply.task_id == tasks[1].task_id and reply.error is None
        honest.join(TIMEOUT)
        assert honest.outcome == "accepted", honest.outcome
        with pytest.raises(grpc.RpcError) as cut:
            next(answers)
        assert cut.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "upload took over" in str(cut.value.details())
        assert deployment.budget.peak == 1  # never mallory's and alice's at once
    finally:
        release.set()
        deployment.grid.close()


# --- the node's side, against a hub the test plays ------------------------------------------


class PlayedHub:
    """PushReply as the test says: it reads the header, answers ``answers`` in turn (reading
    the rest of the upload before an ``accepted``), and counts every byte it was sent."""

    def __init__(self, answers: list[pb.PushReplyAck]) -> None:
        self.answers, self.received = answers, 0
        self.ended = threading.Event()
        self.server = grpc.server(ThreadPoolExecutor(2))
        handler = grpc.stream_stream_rpc_method_handler(
            self.push, response_serializer=pb.PushReplyAck.SerializeToString
        )
        service = {"PushReply": handler}
        self.server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(FLEET, service)])
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def push(self, chunks: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[Any]:
        decoder = wire.Decoder()
        try:
            while decoder.head is None:
                data = pb.Chunk.FromString(next(chunks)).data
                self.received += len(data)
                decoder.feed_head(data)
            for answer in self.answers:
                if answer.accepted:  # as a hub does, once it has read the whole upload
                    for raw in chunks:
                        self.received += len(pb.Chunk.FromString(raw).data)
                yield answer
            for raw in chunks:  # what a node sends after a refusal: nothing, it hangs up
                self.received += len(pb.Chunk.FromString(raw).data)
        finally:
            self.ended.set()

    def stop(self) -> None:
        self.server.stop(None)


def reply_of(nbytes: int) -> Message:
    arrays = Arrays({"w": np.arange(nbytes, dtype=np.uint8)})
    return Message("fit", task_id="t", run_id="r", round=1, is_reply=True, arrays=arrays)


@pytest.mark.parametrize("answers", ["refused", "accepted"])
def test_a_node_sends_its_arrays_only_once_the_hub_says_so(answers: str) -> None:
    reply = reply_of(3 * 1024 * 1024)
    head = len(wire.encode_parts(reply)[0])
    if answers == "refused":  # from its header: not one byte of the arrays travels
        hub = PlayedHub([pb.PushReplyAck(accepted=False, reason="no task of yours")])
    else:
        hub = PlayedHub([pb.PushReplyAck(send_arrays=True), pb.PushReplyAck(accepted=True)])
    client = FleetClient(f"127.0.0.1:{hub.port}")
    try:
        if answers == "refused":
            with pytest.raises(HubRefused, match="no task of yours"):
                client.push_reply(reply)
        else:
            client.push_reply(reply)
        assert hub.ended.wait(TIMEOUT)
        assert hub.received == (head if answers == "refused" else len(wire.encode(reply)))
    finally:
        client.close()
        hub.stop()


def test_a_reply_without_array_bytes_goes_whole_and_waits_for_no_word() -> None:
    reply = reply_of(0)
    hub = PlayedHub([pb.PushReplyAck(accepted=True)])
    client = FleetClient(f"127.0.0.1:{hub.port}")
    try:
        client.push_reply(reply)
        assert hub.ended.wait(TIMEOUT) and hub.received == len(wire.encode(reply))
    finally:
        client.close()
        hub.stop()


@pytest.mark.parametrize("damage", ["longer", "shorter"])
def test_an_upload_longer_or_shorter_than_its_header_says_is_refused_and_leaves_no_file(
    deployment: Deployment, damage: str
) -> None:
    client = deployment.node("mallory")
    loop = deployment.loop([deployment.task(client, 0)])
    task = client.pull_task(TIMEOUT)
    assert task is not None
    data = wire.encode(task.message.reply(arrays=task.message.arrays))
    data = data + b"\0" * 8 if damage == "longer" else data[:-8]
    pieces = [data[start : start + (1 << 18)] for start in range(0, len(data), 1 << 18)]
    *_, answer = client.stub.PushReply(
        iter([pb.Chunk(data=piece) for piece in pieces]),
        metadata=[(NODE_ID_HEADER, str(client.node_id))],
        timeout=TIMEOUT,
    )
    assert not answer.accepted
    reason = "unexpected bytes after the end" if damage == "longer" else "truncated"
    assert reason in answer.reason, answer.reason
    assert not list((deployment.hub.state.data_dir / "runs").rglob("*.pln*"))
    assert deployment.budget.held == 0  # its place is back
    client.push_reply(task.message.reply(arrays=task.message.arrays))  # the right one is taken
    reply = loop.replies.get(timeout=TIMEOUT)
    assert reply is not None and reply.error is None


def test_an_upload_cut_while_its_last_write_fails_is_one_line_and_no_traceback(
    deployment: Deployment, caplog: pytest.LogCaptureFixture
) -> None:
    client = deployment.node("mallory")
    deployment.loop([deployment.task(client, 0)])
    task = client.pull_task(TIMEOUT)
    assert task is not None
    head, body = wire.encode_parts(task.message.reply(arrays=task.message.arrays))
    told = threading.Event()

    def upload() -> Iterator[bytes]:
        yield data_chunk(head)
        told.wait(TIMEOUT)
        yield data_chunk(b"".join(map(bytes, body)) + bytes(100))  # past its declared size
        yield b"\xff\xff\xff"  # and at once garbage: the upload ends while that write fails

    answers = client._push(upload(), metadata=[(NODE_ID_HEADER, str(client.node_id))])
    assert next(answers).send_arrays
    told.set()
    with pytest.raises(grpc.RpcError) as cut:
        next(answers)
    assert cut.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    wait_until(lambda: deployment.budget.held == 0, "its place to come back")
    gc.collect()  # an exception no one retrieved is logged when its future goes
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert not list((deployment.hub.state.data_dir / "runs").rglob("*.pln*"))


def test_empty_chunks_before_the_header_is_whole_are_refused(deployment: Deployment) -> None:
    client = deployment.node("mallory")
    prefix = wire.encode_parts(reply_of(8))[0][:4]
    [answer] = client.stub.PushReply(
        iter([pb.Chunk(data=prefix), *[pb.Chunk(data=b"")] * 1000]),
        metadata=[(NODE_ID_HEADER, str(client.node_id))],
        timeout=TIMEOUT,
    )
    assert not answer.accepted and "an empty chunk before the reply's header" in answer.reason
