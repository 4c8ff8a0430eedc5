"""Recycler: a Decoder decodes into the last message's arrays only once nobody else holds
them, so no one who kept a message, an array or a view of one ever sees it change."""

from __future__ import annotations

import gc
from collections.abc import Callable

import numpy as np
import pytest

from pollinate import wire
from pollinate.errors import WireError
from pollinate.records import Arrays, Message
from pollinate.recycle import Recycler


def decoded(values: np.ndarray, recycler: Recycler, chunk: int = 7) -> Message:
    decoder = wire.Decoder(recycler=recycler)
    for piece in wire.iter_encode(Message("fit", arrays=Arrays({"w": values})), chunk):
        decoder.feed(piece)
    return decoder.finish()


def decoded_arrays(arrays: dict[str, np.ndarray], recycler: Recycler) -> Message:
    decoder = wire.Decoder(recycler=recycler)
    for piece in wire.iter_encode(Message("fit", arrays=Arrays(arrays)), 1000):
        decoder.feed(piece)
    return decoder.finish()


def address(message: Message) -> int:
    return int(message.arrays["w"].ctypes.data)


def test_a_message_nobody_holds_is_decoded_into_again() -> None:
    recycler = Recycler()
    first = decoded(np.zeros(100, np.float32), recycler)
    where = address(first)
    del first
    second = decoded(np.arange(100, dtype=np.float32), recycler)
    assert address(second) == where
    np.testing.assert_array_equal(second.arrays["w"], np.arange(100, dtype=np.float32))


def test_a_message_still_held_is_left_alone() -> None:
    recycler = Recycler()
    first = decoded(np.zeros(100, np.float32), recycler)
    second = decoded(np.ones(100, np.float32), recycler)
    assert address(second) != address(first)
    np.testing.assert_array_equal(first.arrays["w"], np.zeros(100, np.float32))


@pytest.mark.parametrize(
    "keep",
    [
        lambda m: m.arrays["w"][:10],  # a view
        lambda m: m.arrays,  # the Arrays
        lambda m: memoryview(m.arrays["w"]),  # a buffer export
        lambda m: (m.arrays["w"],),  # the array itself, elsewhere
    ],
    ids=["view", "arrays", "memoryview", "array"],
)
def test_an_array_held_in_any_way_is_left_alone(keep: Callable[[Message], object]) -> None:
    recycler = Recycler()
    first = decoded(np.zeros(100, np.float32), recycler)
    where, held = address(first), keep(first)
    del first
    gc.collect()
    second = decoded(np.ones(100, np.float32), recycler)
    assert address(second) != where
    assert held is not None


def test_another_shape_or_dtype_gets_a_fresh_array() -> None:
    recycler = Recycler()
    first = decoded(np.zeros(100, np.float32), recycler)
    del first
    other = decoded(np.ones(99, np.float32), recycler)
    assert other.arrays["w"].shape == (99,)
    del other
    wider = decoded(np.ones(99, np.float64), recycler)
    assert wider.arrays["w"].dtype == np.float64


def test_a_rejected_message_leaves_the_next_one_whole() -> None:
    recycler = Recycler()
    del_me = decoded(np.zeros(100, np.float32), recycler)
    del del_me
    pieces = list(wire.iter_encode(Message("fit", arrays=Arrays({"w": np.ones(100, np.float32)}))))
    decoder = wire.Decoder(recycler=recycler)
    decoder.feed(b"".join(pieces)[:-8])
    with pytest.raises(WireError):
        decoder.finish()
    again = decoded(np.full(100, 2, np.float32), recycler)
    np.testing.assert_array_equal(again.arrays["w"], np.full(100, 2, np.float32))


def test_an_array_made_read_only_and_let_go_is_not_decoded_into() -> None:
    recycler = Recycler()
    first = decoded(np.zeros(100, np.float32), recycler)
    first.arrays["w"].flags.writeable = False
    del first
    second = decoded(np.ones(100, np.float32), recycler)  # no ValueError: a fresh array
    np.testing.assert_array_equal(second.arrays["w"], np.ones(100, np.float32))


def test_many_arrays_of_one_shape_are_each_reused_once() -> None:
    recycler = Recycler()
    arrays = {f"layer{i}": np.full(10, i, np.float32) for i in range(50)}
    first = decoded_arrays(arrays, recycler)
    where = {id(a) for a in first.arrays.values()}
    del first
    second = decoded_arrays({k: v + 1 for k, v in arrays.items()}, recycler)
    assert {id(a) for a in second.arrays.values()} == where
    assert [float(a[0]) for a in second.arrays.values()] == [i + 1.0 for i in range(50)]
