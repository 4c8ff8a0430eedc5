"""Bulk chunks are serialized by hand (``data_chunk``), exactly as protobuf would write them."""

from __future__ import annotations

import pytest

from pollinate.transport import data_chunk
from pollinate.transport import fleet_pb2 as pb


@pytest.mark.parametrize("size", [1, 127, 128, 16_383, 16_384, 1 << 20, (1 << 21) + 3])
def test_a_data_chunk_is_the_protobuf_encoding_of_chunk_and_task_chunk(size: int) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    expected = pb.Chunk(data=data).SerializeToString()
    assert data_chunk(data) == data_chunk(memoryview(data)) == expected
    assert pb.TaskChunk(data=data).SerializeToString() == expected
    assert pb.Chunk.FromString(data_chunk(data)).data == data
