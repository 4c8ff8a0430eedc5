"""The local API between the hub and a run process: what a hostile run process can send."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import numpy as np
import pytest

import pollinate.wire as wire
from pollinate.hub.channel import (
    Channel,
    ChannelClosed,
    ChannelError,
    event_from_json,
    event_to_json,
)
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
