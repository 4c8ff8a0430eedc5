"""A chunk's data is read as a view only in the exact layout ``data_chunk`` writes; every
other layout goes through protobuf, and both give the same bytes."""

from __future__ import annotations

import random

import pytest

from pollinate.transport import chunk_data, data_chunk
from pollinate.transport import fleet_pb2 as pb


@pytest.mark.parametrize("size", [0, 1, 127, 128, 16_383, 16_384, 1 << 20])
def test_a_data_chunk_reads_back_as_a_view_of_the_same_bytes(size: int) -> None:
    data = random.Random(size).randbytes(size)
    raw = data_chunk(data)
    assert pb.Chunk.FromString(raw).data == data
    view = chunk_data(raw)
    assert view is not None and bytes(view) == data
    assert view.obj is raw  # no copy


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x0a",  # a tag and no length
        b"\x0a\x80",  # a length cut short
        b"\x0a\x05abc",  # a length longer than what follows
        b"\x0a\x01abc",  # bytes after the field
        b"\x12\x03abc",  # another field
        b"\x0a\xff\xff\xff\xff\xff\x01",  # a length of more than five bytes
        pb.TaskChunk(app_hash="h", data=b"abc").SerializeToString(),  # more than data
    ],
)
def test_any_other_layout_is_left_to_protobuf(raw: bytes) -> None:
    assert chunk_data(raw) is None


def test_fuzzed_chunks_give_what_protobuf_gives_or_are_left_to_it() -> None:
    rng = random.Random(20)
    for _ in range(2000):
        raw = rng.randbytes(rng.randrange(0, 12))
        if rng.random() < 0.5:
            raw = b"\x0a" + raw
        view = chunk_data(raw)
        if view is not None:
            assert bytes(view) == pb.Chunk.FromString(raw).data
