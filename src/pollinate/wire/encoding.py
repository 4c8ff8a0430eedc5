"""Message -> bytes: ``encode`` whole, or ``iter_encode`` in bounded pieces.

The whole message is checked before the first byte is produced. A Message that cannot travel
raises TypeError/ValueError here; ``WireError`` is kept for bytes received.
"""

from __future__ import annotations

import base64
import itertools
import json
import struct
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from pollinate.records import Message, MessageKind, Scalar
from pollinate.wire.format import ALIGNMENT, FIELD_TYPES, LITTLE_ENDIAN, MAGIC, field_problem


def encode(message: Message) -> bytes:
    """The wire bytes of ``message``; raise TypeError/ValueError if it cannot travel."""
    head, arrays = _plan(message)
    return b"".join([head, *_pieces(head, arrays)])


def iter_encode(message: Message, chunk_size: int = 4 << 20) -> Iterator[bytes | memoryview]:
    """The bytes of ``encode(message)`` in pieces of at most ``chunk_size`` bytes.

    Contiguous little-endian arrays are sent as memoryview slices of their own data, so a large
    model streams without a second copy. The message is fully checked before the first piece.
    """
    head, body = encode_parts(message, chunk_size)
    return itertools.chain(_chunks([head], chunk_size), body)


def encode_parts(
    message: Message, chunk_size: int = 4 << 20
) -> tuple[bytes, Iterator[bytes | memoryview]]:
    """``iter_encode`` in two parts: the prefix and header whole, then the rest in pieces of at
    most ``chunk_size`` bytes. A sender can let the receiver check the header before it sends
    a byte of the arrays (a node's reply waits for the hub's "send the arrays")."""
    if type(chunk_size) is not int or chunk_size < 1:
        raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
    head, arrays = _plan(message)
    return head, _chunks(_pieces(head, arrays), chunk_size)


def _chunks(pieces: Iterable[bytes | memoryview], size: int) -> Iterator[bytes | memoryview]:
    for piece in pieces:
        for start in range(0, len(piece), size):
            yield piece[start : start + size]


def _plan(message: Message) -> tuple[bytes, list[np.ndarray]]:
    """Check ``message`` and return its prefix + header, and its arrays."""
    # Message checked its arrays' dtypes and its config and metrics when it was made.
    arrays = message.arrays
    header = {
        **{name: _field_value(message, name) for name in FIELD_TYPES},
        "config": {k: _tag(v) for k, v in message.config.items()},
        "metrics": {k: _tag(v) for k, v in message.metrics.items()},
        "arrays": [
            {"name": name, "dtype": a.dtype.name, "shape": list(a.shape)}
            for name, a in arrays.items()
        ],
    }
    text = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    if len(text) > 0xFFFFFFFF:
        raise ValueError(f"the header is {len(text)} bytes, more than the 4 GiB the format holds")
    return MAGIC + struct.pack("<I", len(text)) + text, list(arrays.values())


def _pieces(head: bytes, arrays: list[np.ndarray]) -> Iterator[bytes | memoryview]:
    """The bytes after ``head``: each array after its padding."""
    position = len(head)
    for array in arrays:
        padding = -position % ALIGNMENT
        little = array.astype(LITTLE_ENDIAN[array.dtype.name], order="C", copy=False)
        data = little.reshape(-1).view(np.uint8).data
        yield bytes(padding)
        yield data
        position += padding + len(data)


def _field_value(message: Message, name: str) -> Any:
    value = getattr(message, name)
    value = value.item() if isinstance(value, np.generic) else value
    if name == "loss" and type(value) is int:
        value = float(value)
    if name == "kind" and isinstance(value, MessageKind):
        value = value.value  # the wire carries the kind's plain string
    problem = field_problem(name, value)
    if problem is not None:
        raise problem[0](f"cannot encode Message.{name}: it {problem[1]}")
    return value


def _tag(value: Scalar) -> list[Any]:
    if isinstance(value, bool):
        return ["bool", value]
    if isinstance(value, int):
        return ["int", int(value)]
    if isinstance(value, float):
        return ["float", float(value)]
    if isinstance(value, str):
        return ["str", str(value)]
    return ["bytes", base64.b64encode(value).decode("ascii")]
