"""Message <-> bytes: the one place in pollinate that parses untrusted bytes.

Invariant: ``decode`` and ``Decoder`` never raise anything but ``WireError``, whatever bytes
they are given (malformed, truncated, over-long, over a limit, hostile). Nothing is unpickled or
evaluated: arrays travel as raw little-endian buffers described by a JSON header.

The decoder checks exact types, ``Limits`` (before anything is allocated), that bool data is 0
or 1, that padding is zero and that the length is exact. The parts:

- ``format``: the byte layout and the header's keys (written out in its docstring), ``Limits``,
  and the checks on a Message field that both directions make;
- ``encoding``: ``encode`` and ``iter_encode`` (bounded pieces, no second copy of the arrays);
- ``header``: the prefix and JSON header of received bytes, checked field by field;
- ``decoding``: ``decode`` (zero-copy views) and the streaming ``Decoder`` (which may decode
  into arrays a ``Recycler``, ``pollinate/recycle.py``, hands out).

>>> import numpy as np
>>> from pollinate.records import Arrays, Message
>>> message = Message("fit", arrays=Arrays({"w": np.arange(3.0)}), config={"lr": 0.1})
>>> decode(encode(message)).arrays["w"]
array([0., 1., 2.])
"""

from __future__ import annotations

from pollinate.wire.decoding import Decoder, decode
from pollinate.wire.encoding import encode, encode_parts, iter_encode
from pollinate.wire.format import DEFAULT_LIMITS, DTYPES, MAGIC, Limits

__all__ = [
    "DEFAULT_LIMITS",
    "DTYPES",
    "MAGIC",
    "Decoder",
    "Limits",
    "decode",
    "encode",
    "encode_parts",
    "iter_encode",
]
