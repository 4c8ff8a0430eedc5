"""A node's large reply travels on a connection of its own, closed once it is through.

The hub's gRPC keeps a connection's read buffers after it carried an upload (~1 MB after
tens of MB) until the connection closes; a reply of more than one chunk therefore goes on a
fresh connection, so the hub's memory does not grow with the number of nodes that uploaded.
A small gRPC server on 127.0.0.1 stands in for the hub's fleet port and notes which
connection (the peer's address and port) each call came on.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import numpy as np
import pytest

from pollinate.records import Arrays, Message
from pollinate.transport import CHUNK_BYTES, FLEET_SERVICE
from pollinate.transport import fleet_pb2 as pb
from pollinate.transport.client import FleetClient


class FleetPort:
    """Heartbeat and PushReply, each noting its call's peer; PushReply reads every chunk."""

    def __init__(self) -> None:
        self.peers: list[tuple[str, str]] = []  # (call, peer)
        self.received: list[int] = []  # bytes of each reply

    def heartbeat(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.peers.append(("heartbeat", context.peer()))
        return pb.HeartbeatReply(node_id=7, interval_seconds=5.0)

    def push(self, chunks: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
        self.peers.append(("push", context.peer()))
        yield pb.PushReplyAck(send_arrays=True)
        self.received.append(sum(len(chunk.data) for chunk in chunks))
        yield pb.PushReplyAck(accepted=True)


@pytest.fixture
def port() -> Iterator[tuple[FleetPort, str]]:
    fleet = FleetPort()
    handlers = {
        "Heartbeat": grpc.unary_unary_rpc_method_handler(
            fleet.heartbeat,
            request_deserializer=pb.HeartbeatRequest.FromString,
            response_serializer=pb.HeartbeatReply.SerializeToString,
        ),
        "PushReply": grpc.stream_stream_rpc_method_handler(
            fleet.push,
            request_deserializer=pb.Chunk.FromString,
            response_serializer=pb.PushReplyAck.SerializeToString,
        ),
    }
    server = grpc.server(futures.ThreadPoolExecutor(4))
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(FLEET_SERVICE, handlers)])
    number = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield fleet, f"127.0.0.1:{number}"
    finally:
        server.stop(0)


def reply(nbytes: int) -> Message:
    arrays = Arrays({"w": np.ones(nbytes // 4, np.float32)})
    return Message("fit", task_id="t", run_id="r", round=1, node_id=7, arrays=arrays)


def test_a_large_reply_goes_on_a_connection_of_its_own_a_small_one_on_the_nodes(
    port: tuple[FleetPort, str],
) -> None:
    fleet, address = port
    client = FleetClient(address)
    try:
        client.heartbeat("apphash", {})
        client.push_reply(reply(4 * CHUNK_BYTES))
        client.push_reply(reply(CHUNK_BYTES // 2))
        client.push_reply(reply(4 * CHUNK_BYTES))
        client.heartbeat("apphash", {})
    finally:
        client.close()
    calls = [call for call, _ in fleet.peers]
    assert calls == ["heartbeat", "push", "push", "push", "heartbeat"]
    heartbeat, large, small, again, later = (peer for _, peer in fleet.peers)
    assert heartbeat == small == later  # the node's lasting connection
    assert len({heartbeat, large, again}) == 3  # each large reply: a connection of its own
    assert fleet.received[0] > 4 * CHUNK_BYTES and fleet.received[2] > 4 * CHUNK_BYTES
