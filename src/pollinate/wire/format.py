"""The wire format: its byte layout, the header's keys, and the limits a decoder enforces.

The format, byte by byte (offsets count from the first byte of the message)::

    0        4 bytes   magic b"PLN\\x01"; the last byte is the format version
    4        4 bytes   H, the length of the header, unsigned 32-bit little-endian
    8        H bytes   the header, a UTF-8 JSON object (below)
    then, for each array in header order:
             0-63 zero bytes, up to the next multiple of 64 (every buffer is 64-byte aligned)
             itemsize * prod(shape) bytes: the array's data, C order, little-endian
    the message ends right after the last array's data (after the header if there are none)

The header has exactly these keys, and no JSON object in it repeats a key::

    kind          "fit" | "evaluate" | "get_arrays"
    task_id       str                   run_id     str
    round         int in 0..2**63-1     node_id    int in 0..2**63-1
    num_examples  int in 0..2**63-1     is_reply   bool
    loss          float or null (NaN and Infinity are written as Python's json does)
    error         str or null
    config        {key: [tag, value]}, tag one of "bool", "int", "float", "str", "bytes";
    metrics       bytes values are base64 strings, so every Scalar round-trips exactly
    arrays        [{"name": str, "dtype": str, "shape": [int, ...]}, ...], names unique

Text is bounded (``pollinate.text``): task_id, run_id and every config and metrics key hold
at most ``MAX_NAME`` characters and no control character, or the message is refused; the
decoded Message cuts ``error`` and str values longer than ``MAX_TEXT``, saying their length.
A dtype is one of the names in ``DTYPES``. The checks on a Message field live here because both
directions make them: ``encode`` refuses what ``decode`` would refuse, in the same words.
"""

from __future__ import annotations

import reprlib
from dataclasses import dataclass, fields
from typing import TypeGuard

import numpy as np

from pollinate.records import ARRAY_DTYPES, MESSAGE_KINDS
from pollinate.text import name_problem

MAGIC = b"PLN\x01"
ALIGNMENT = 64
DTYPES = ARRAY_DTYPES
LITTLE_ENDIAN = {name: np.dtype(name).newbyteorder("<") for name in DTYPES}
PREFIX_BYTES = 8  # magic + header length
_INT64_MAX = 2**63 - 1
# The header's Message fields (all but config, metrics and arrays) and the types each takes.
FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "kind": (str,),
    "task_id": (str,),
    "run_id": (str,),
    "round": (int,),
    "node_id": (int,),
    "is_reply": (bool,),
    "num_examples": (int,),
    "loss": (float, type(None)),
    "error": (str, type(None)),
}
HEADER_KEYS = frozenset({*FIELD_TYPES, "config", "metrics", "arrays"})
TAG_TYPES: dict[str, type] = {"bool": bool, "int": int, "float": float, "str": str, "bytes": str}

# Untrusted values are shown in errors through this, so an error never dumps megabytes.
_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = 60
show = _repr.repr


@dataclass(frozen=True)
class Limits:
    """What a decoder accepts at most; checked before anything is allocated.

    A hub that knows its model size should lower ``max_total_array_bytes`` to about that.
    """

    max_header_bytes: int = 1 << 20
    max_arrays: int = 100_000
    max_total_array_bytes: int = 8 << 30
    max_ndim: int = 32

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if type(value) is not int or value < 0:
                raise ValueError(f"Limits.{field.name} must be an int >= 0, got {value!r}")


DEFAULT_LIMITS = Limits()


def field_problem(name: str, value: object) -> tuple[type[Exception], str] | None:
    """What is wrong with a Message field's value, as (exception class, text), or None."""
    allowed = FIELD_TYPES[name]
    if type(value) not in allowed:
        wanted = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
        return TypeError, f"must be {wanted}, got {type(value).__name__}"
    if type(value) is int and not 0 <= value <= _INT64_MAX:
        return ValueError, f"must be in 0..2**63-1, got {show(value)}"
    if type(value) is str and not is_text(value):
        return ValueError, f"is not valid Unicode (it holds a lone surrogate): {show(value)}"
    if name == "kind" and value not in MESSAGE_KINDS:
        return ValueError, f"must be one of {', '.join(MESSAGE_KINDS)}, got {show(value)}"
    if name in ("task_id", "run_id") and (problem := name_problem(str(value))) is not None:
        return ValueError, f"{problem}: {show(value)}"
    return None


def is_text(value: object) -> TypeGuard[str]:
    """A str that is valid Unicode: JSON escapes like \\ud800 can smuggle in lone surrogates."""
    if type(value) is not str:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
