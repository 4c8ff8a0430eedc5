"""What bounds each peer of the hub's servers: call limits, the idle cut, checked fields."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from pollinate.hub.hub import Hub
from pollinate.transport.client import FleetClient, HubRefused
from pollinate.transport.guards import CallLimits, Idle, Overloaded, next_within
from pollinate.transport.ports import HubPorts, serve


def test_a_peer_holds_at_most_its_limit_of_calls_and_others_are_not_counted_against_it() -> None:
    limits = CallLimits(2)
    limits.enter("node 1"), limits.enter("node 1")
    with pytest.raises(Overloaded, match="node 1 already has 2 calls open"):
        limits.enter("node 1")
    limits.enter("node 2")  # another peer is not affected
    limits.leave("node 1")
    limits.enter("node 1")  # a call that ended makes room


async def stream(items: list[bytes], stall: asyncio.Event) -> AsyncIterator[bytes]:
    for item in items:
        yield item
    await stall.wait()  # then sends nothing, and holds the stream


def test_an_upload_that_stops_sending_is_cut_and_one_that_ends_is_not() -> None:
    async def scenario() -> None:
        stall = asyncio.Event()
        chunks = aiter(stream([b"a", b"b"], stall))
        assert [await next_within(chunks, 5), await next_within(chunks, 5)] == [b"a", b"b"]
        with pytest.raises(Idle, match="nothing arrived for 0.1s"):
            await next_within(chunks, 0.1)
        stall.set()

        async def ended() -> AsyncIterator[bytes]:
            yield b"last"

        finished = aiter(ended())
        assert await next_within(finished, 5) == b"last"
        assert await next_within(finished, 5) is None

    asyncio.run(scenario())


@pytest.fixture
def insecure_hub(tmp_path: Path) -> Iterator[HubPorts]:
    hub = Hub(tmp_path / "hub")
    servers = serve(hub, "127.0.0.1:0")
    yield servers
    servers.stop(0)
    hub.close()


@pytest.mark.parametrize(
    ("fields", "refusal"),
    [
        ({"name": "x" * 10_000}, "the node's name"),
        ({"name": "evil\nnode"}, "the node's name"),
        ({"session": "s" * 300}, "the node's session"),
        ({"app_hash": "h" * 1_000_000}, "the node's app hash"),
        ({"node_config": {"k\x00": "v"}}, "a node config key"),
        ({"node_config": {"partition-id": "9" * 5000}}, "over 1000"),
        ({"labels": {f"k{i}": "v" for i in range(65)}}, "65 labels, over the limit of 64"),
        ({"resources": {f"k{i}": "1" for i in range(65)}}, "65 resources, over the limit"),
        ({"labels": {"region": "e u"}}, "a node's label value 'e u' holds ' '"),
        ({"labels": {"region\x1b": "eu"}}, "a node's label key"),
        ({"resources": {"gpus": "9" * 300}}, "a node's resource value .*MAX_NAME"),
    ],
)
def test_a_heartbeat_whose_fields_are_not_names_or_are_too_long_is_refused(
    insecure_hub: HubPorts, fields: dict[str, object], refusal: str
) -> None:
    client = FleetClient(f"127.0.0.1:{insecure_hub.port}")
    arguments = {"app_hash": "", "node_config": {}, "name": "alice", **fields}
    try:
        with pytest.raises(HubRefused, match=refusal):
            client.heartbeat(**arguments)  # type: ignore[arg-type]
        client.heartbeat("", {}, name="alice")  # the hub goes on serving
        assert client.node_id > 0
    finally:
        client.close()
