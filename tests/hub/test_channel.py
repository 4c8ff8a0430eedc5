"""The local API between the hub and a run process: what a hostile run process can send."""

from __future__ import annotations

import fcntl
import os
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import pollinate.wire as wire
from pollinate.hub.channel import (
    MAPPED,
    MAPPED_BYTES,
    Channel,
    ChannelClosed,
    ChannelError,
    File,
    event_from_json,
    event_to_json,
)
from pollinate.hub.sealed import SEALS
from pollinate.hub.supervisor import _task
from pollinate.loop.events import ReplyReceived, RoundFinished, Stage, TaskFailed
from pollinate.loop.history import Failure, FailureKind, RoundRecord
from pollinate.records import Arrays, Message, MessageKind


@pytest.fixture
def pair() -> Iterator[tuple[Channel, Channel]]:
    a, b = socket.socketpair()
    hub, child = (
        Channel(a, max_json=1024, max_message=4096),
        Channel(b, max_json=1024, max_message=4096),
    )
    yield hub, child
    hub.close()
    child.close()


def test_an_op_and_its_wire_messages_arrive_whole(pair: tuple[Channel, Channel]) -> None:
    hub, child = pair
    message = Message(
        MessageKind.FIT, task_id="r:1:fit:3", run_id="r", arrays=Arrays({"w": np.arange(4.0)})
    )
    child.send({"op": "dispatch", "call": 1}, [wire.iter_encode(message)])
    op, messages = hub.receive()
    assert op == {"op": "dispatch", "call": 1, "messages": 1}
    assert wire.decode(bytes(messages[0])).arrays["w"].tolist() == [0.0, 1.0, 2.0, 3.0]


def test_a_frame_over_the_limit_is_refused_from_its_length(pair: tuple[Channel, Channel]) -> None:
    hub, child = pair
    child.sock.sendall(struct.pack(">IB", 1 << 30, 1))  # a 1 GiB JSON frame, never sent
    with pytest.raises(ChannelError, match="a frame of 1073741824 bytes; the limit is 1024"):
        hub.receive()


def test_a_message_over_the_limit_is_refused(pair: tuple[Channel, Channel]) -> None:
    hub, child = pair
    child.send({"op": "checkpoint"}, [[b"x" * 3000, b"x" * 3000]])
    with pytest.raises(ChannelError, match="over 4096 bytes"):
        hub.receive()


def test_a_peer_that_is_gone_is_told_apart(pair: tuple[Channel, Channel]) -> None:
    hub, child = pair
    child.close()
    with pytest.raises(ChannelClosed):
        hub.receive()


def test_a_run_process_cannot_send_another_runs_task() -> None:
    theirs = Message(MessageKind.FIT, task_id="other:1:fit:3", run_id="other", node_id=3)
    with pytest.raises(ChannelError, match="not one of run mine's"):
        _task(bytearray(wire.encode(theirs)), "mine")
    disguised = Message(MessageKind.FIT, task_id="other:1:fit:3", run_id="mine", node_id=3)
    with pytest.raises(ChannelError):
        _task(bytearray(wire.encode(disguised)), "mine")


def test_events_are_rebuilt_field_by_field() -> None:
    record = RoundRecord(round=2, fit={"loss": float("nan")}, failed=[Failure(3, "fit", "x")])
    for event in (ReplyReceived(2, Stage.FIT, 3, True), RoundFinished(record)):
        rebuilt = event_from_json(event_to_json(event))
        assert type(rebuilt) is type(event)
    assert event_from_json(event_to_json(ReplyReceived(2, Stage.FIT, 3, True))) == ReplyReceived(
        2, Stage.FIT, 3, True
    )
    failed = TaskFailed(2, Stage.EVALUATE, 3, FailureKind.LOST)
    assert event_from_json(event_to_json(failed)) == failed
    lost = RoundRecord(round=2, failed=[Failure(3, "fit", "gone", FailureKind.LOST)])
    assert event_from_json(event_to_json(RoundFinished(lost))) == RoundFinished(lost)
    for bad in (
        {"type": "ReplyReceived", "round": "2", "stage": "fit", "node_id": 3, "ok": True},
        {"type": "ReplyReceived", "round": 2, "stage": "steal", "node_id": 3, "ok": True},
        {"type": "Exec", "code": "import os"},
        {"type": "RoundFinished", "record": {"round": 1, "fit": [1, 2]}},
        {"type": "RoundFinished", "record": {"round": 1, "__class__": "x"}},
        {"type": "TaskFailed", "round": 2, "stage": "fit", "node_id": 3, "kind": "pwned"},
        {"type": "TaskFailed", "round": 2, "stage": "fit", "node_id": 3, "kind": ["lost"]},
        {"type": "RoundFinished", "record": {"round": 1, "failed": [{"node_id": 1}]}},
    ):
        with pytest.raises(ChannelError):
            event_from_json(bad)


# --- large messages travel in a sealed memfd (MAPPED) ------------------------------------


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _send_with_fd(channel: Channel, kind: int, body: bytes, fd: int) -> None:
    socket.send_fds(channel.sock, [struct.pack(">IB", len(body), kind) + body], [fd])


def _sealed(data: bytes, seals: int = SEALS) -> int:
    fd = os.memfd_create("test", os.MFD_ALLOW_SEALING)
    os.write(fd, data)
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    return fd


@pytest.fixture
def big_pair() -> Iterator[tuple[Channel, Channel]]:
    a, b = socket.socketpair()
    hub, child = (
        Channel(a, max_json=1024, max_message=64 << 20),
        Channel(b, max_json=1024, max_message=64 << 20),
    )
    yield hub, child
    hub.close()
    child.close()


def test_a_large_message_arrives_mapped_and_cannot_change(
    big_pair: tuple[Channel, Channel],
) -> None:
    hub, run = big_pair
    model = np.arange(MAPPED_BYTES // 4 * 3, dtype=np.float32)  # 3 MiB: mapped
    reply = Message(MessageKind.FIT, task_id="r:1:fit:3", run_id="r", arrays=Arrays({"w": model}))
    small = Message(MessageKind.EVALUATE, task_id="r:1:evaluate:3", run_id="r")
    before = _open_fds()
    hub.send({"op": "reply"}, [wire.iter_encode(reply), wire.iter_encode(small)])
    op, (data, tiny) = run.receive()
    assert op == {"op": "reply", "messages": 2}
    assert isinstance(tiny.obj, bytearray) and not isinstance(data.obj, bytearray)
    assert data.readonly
    got = wire.decode(data, wire.Limits(len(data), len(data), len(data)))
    np.testing.assert_array_equal(got.arrays["w"], model)
    assert wire.decode(tiny).task_id == "r:1:evaluate:3"
    assert _open_fds() == before  # both ends closed the descriptor; the mapping holds the bytes


def test_a_descriptor_that_is_not_a_sealed_memfd_is_refused_and_closed(
    big_pair: tuple[Channel, Channel], tmp_path: Path
) -> None:
    hub, run = big_pair
    size = struct.pack(">Q", 4096)
    plain = tmp_path / "file"
    plain.write_bytes(b"x" * 4096)
    unsealed = os.memfd_create("test", os.MFD_ALLOW_SEALING)
    os.write(unsealed, b"x" * 4096)
    # sealed against growing and shrinking but not writing: the sender could change it later
    writable = _sealed(b"x" * 4096, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
    cases = {
        os.open(plain, os.O_RDONLY): "not a sealed memory file",
        unsealed: "could still change",
        writable: "could still change",
        _sealed(b"x" * 100): "of 100 bytes, said to be 4096",
    }
    before = _open_fds()
    for fd, error in cases.items():
        hub.send({"op": "reply"}, [])  # announces no message: then one comes regardless
        _announce(hub)
        _send_with_fd(hub, MAPPED, size, fd)
        os.close(fd)
        run.receive()
        with pytest.raises(ChannelError, match=error):
            run.receive()
    assert _open_fds() == before - len(cases)


def test_a_descriptor_with_any_other_frame_is_refused_and_closed(
    big_pair: tuple[Channel, Channel],
) -> None:
    hub, run = big_pair
    fd = _sealed(b"x" * 4096)
    before = _open_fds()
    _send_with_fd(hub, 1, b'{"op": "x"}', fd)  # a JSON frame with a descriptor
    with pytest.raises(ChannelError, match="kind 1 came with 1 descriptors"):
        run.receive()
    run.sock.recv(64)  # the refused frame's body: a channel that refused anything is closed
    _announce(hub)
    hub.sock.sendall(struct.pack(">IBQ", 8, MAPPED, 4096))  # MAPPED without its descriptor
    with pytest.raises(ChannelError, match="kind 4 came with 0 descriptors"):
        run.receive()
    os.close(fd)
    assert _open_fds() == before - 1


def _announce(channel: Channel) -> None:
    """A JSON frame saying one message follows, sent by hand."""
    body = b'{"op": "reply", "messages": 1}'
    channel.sock.sendall(struct.pack(">IB", len(body), 1) + body)


def test_a_large_message_of_arrays_the_encoder_converts_arrives_whole(
    big_pair: tuple[Channel, Channel],
) -> None:
    """Big-endian and non-contiguous arrays are converted while the message is written: the
    mapped path writes each piece as it comes."""
    big_endian = np.arange(600_000, dtype=">f4")
    strided = np.arange(1_200_000, dtype=np.float32)[::2]
    message = Message(
        MessageKind.FIT,
        task_id="r:1:fit:3",
        run_id="r",
        arrays=Arrays({"a": big_endian, "b": strided}),
    )
    hub, run = big_pair
    hub.send({"op": "reply"}, [wire.iter_encode(message)])
    _, (data,) = run.receive()
    got = wire.decode(data, wire.Limits(len(data), len(data), len(data))).arrays
    np.testing.assert_array_equal(got["a"], big_endian)
    np.testing.assert_array_equal(got["b"], strided)


def test_a_file_goes_as_it_is_and_only_a_channel_that_trusts_its_peer_maps_it(
    tmp_path: Path,
) -> None:
    """The hub hands its run process a reply as the journal wrote it; the hub's own end,
    whose peer is untrusted, refuses a plain file (its sender could truncate it)."""
    message = Message(
        MessageKind.FIT, task_id="r:1:fit:3", run_id="r", arrays=Arrays({"w": np.arange(9.0)})
    )
    recorded = tmp_path / "reply.pln"
    recorded.write_bytes(wire.encode(message))
    a, b = socket.socketpair()
    hub = Channel(a, max_json=1024, max_message=4096)
    run = Channel(b, max_json=1024, max_message=4096, files_from_peer=True)
    before = _open_fds()
    hub.send({"op": "reply"}, [File(os.open(recorded, os.O_RDONLY))])
    _, (data,) = run.receive()
    assert wire.decode(data).arrays["w"].tolist() == list(range(9))
    run.send({"op": "checkpoint"}, [File(os.open(recorded, os.O_RDONLY))])
    with pytest.raises(ChannelError, match="not a sealed memory file"):
        hub.receive()
    assert _open_fds() == before  # every descriptor closed: sent, mapped or refused
    hub.close()
    run.close()
