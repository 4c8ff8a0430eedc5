"""Received bytes, part one: the prefix and the JSON header, checked field by field.

Everything the header declares is checked here against exact types and ``Limits``, before a
byte of array data is allocated. Like all of decoding, these functions raise only WireError.
"""

from __future__ import annotations

import base64
import json
import math
import struct
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from pollinate.errors import WireError
from pollinate.records import Scalar
from pollinate.text import name_problem
from pollinate.wire.format import (
    ALIGNMENT,
    DTYPES,
    FIELD_TYPES,
    HEADER_KEYS,
    LITTLE_ENDIAN,
    MAGIC,
    PREFIX_BYTES,
    TAG_TYPES,
    Limits,
    field_problem,
    is_text,
    show,
)


@dataclass(frozen=True, slots=True)
class ArraySpec:
    """One array as the header declares it, and where its data sits in the message."""

    name: str
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    offset: int

    @property
    def nbytes(self) -> int:
        return self.dtype.itemsize * math.prod(self.shape)

    @property
    def end(self) -> int:
        return self.offset + self.nbytes

    def describe(self) -> str:
        return (
            f"array {show(self.name)} declares shape {show(self.shape)} of {self.dtype.name}"
            f" = {self.nbytes} bytes"
        )


@dataclass(frozen=True, slots=True)
class Header:
    kwargs: dict[str, Any]  # Message fields but arrays
    specs: list[ArraySpec]
    end: int  # the exact length of the message


def check_magic(start: bytes) -> None:
    if MAGIC.startswith(start[:4]):
        return
    if start[:3] == MAGIC[:3]:
        raise WireError(
            f"wire format version {start[3]} is not supported; this pollinate reads version "
            f"{MAGIC[3]}: run the same pollinate version on the hub and every node"
        )
    raise WireError(f"not a pollinate message: it starts with {bytes(start[:4])!r}, not {MAGIC!r}")


def header_length(prefix: bytes, limits: Limits) -> int:
    check_magic(prefix)
    length: int = struct.unpack_from("<I", prefix, 4)[0]
    _check_limit(limits, "max_header_bytes", length, f"header declares {length} bytes")
    return length


def _check_limit(limits: Limits, name: str, value: int, what: str) -> None:
    limit = getattr(limits, name)
    if value > limit:
        raise WireError(f"{what}, over the limit of {limit} (Limits.{name})")


def parse_header(raw: bytes, limits: Limits) -> Header:
    obj = _load_json(raw)
    if type(obj) is not dict:
        raise WireError(f"header must be a JSON object, got a JSON {type(obj).__name__}")
    missing, unknown = HEADER_KEYS - obj.keys(), obj.keys() - HEADER_KEYS
    if missing or unknown:
        raise WireError(f"header lacks keys {sorted(missing)}, has unknown keys {show(unknown)}")
    kwargs = {name: _checked_field(name, obj[name]) for name in FIELD_TYPES}
    kwargs["config"] = _untag_all(obj["config"], "config")
    kwargs["metrics"] = _untag_all(obj["metrics"], "metrics")
    specs = _specs(obj["arrays"], PREFIX_BYTES + len(raw), limits)
    return Header(kwargs, specs, specs[-1].end if specs else PREFIX_BYTES + len(raw))


def _load_json(raw: bytes) -> Any:
    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys)
    except WireError:
        raise
    except (ValueError, RecursionError) as error:  # also UnicodeDecodeError, too many digits
        raise WireError(f"header is not UTF-8 JSON: {str(error)[:200]}") from None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) < len(pairs):
        key = Counter(key for key, _ in pairs).most_common(1)[0][0]
        raise WireError(f"header repeats the key {show(key)} in one JSON object")
    return obj


def _checked_field(name: str, value: object) -> object:
    problem = field_problem(name, value)
    if problem is not None:
        raise WireError(f"header field {name!r} {problem[1]}")
    return value


def _untag_all(obj: object, what: str) -> dict[str, Scalar]:
    if type(obj) is not dict:
        raise WireError(f"header {what!r} must be a JSON object, got {type(obj).__name__}")
    for key in obj:
        if not is_text(key):
            raise WireError(f"header {what!r} has a key that is not valid Unicode: {show(key)}")
        if (problem := name_problem(key)) is not None:
            raise WireError(f"header {what!r} has a key that {problem}: {show(key)}")
    return {key: _untag(value, f"{what} entry {show(key)}") for key, value in obj.items()}


def _untag(item: object, where: str) -> Scalar:
    if not isinstance(item, list) or len(item) != 2:  # json makes only plain lists
        raise WireError(f"{where} must be a [tag, value] pair, got {show(item)}")
    tag, value = item
    if type(tag) is not str or tag not in TAG_TYPES:
        raise WireError(f"{where} has tag {show(tag)}, not one of {', '.join(TAG_TYPES)}")
    if not _holds(value, TAG_TYPES[tag]):
        raise WireError(f"{where} is tagged {tag!r} but holds {show(value)}")
    return _unbase64(value, where) if tag == "bytes" else value


def _holds(value: object, kind: type) -> bool:
    return type(value) is kind and (kind is not str or is_text(value))


def _unbase64(text: str, where: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise WireError(f"{where} is tagged 'bytes' but is not base64: {show(text)}") from None


def _specs(items: object, position: int, limits: Limits) -> list[ArraySpec]:
    if type(items) is not list:
        raise WireError(f"header 'arrays' must be a JSON list, got {type(items).__name__}")
    _check_limit(limits, "max_arrays", len(items), f"header declares {len(items)} arrays")
    specs: list[ArraySpec] = []
    names: set[str] = set()
    total = 0
    for item in items:
        spec = _spec(item, position, limits)
        if spec.name in names:
            raise WireError(f"array name {show(spec.name)} appears twice")
        total += spec.nbytes
        what = f"arrays declare {total} bytes in total up to {spec.describe()}"
        _check_limit(limits, "max_total_array_bytes", total, what)
        names.add(spec.name)
        specs.append(spec)
        position = spec.end
    return specs


def _spec(item: object, position: int, limits: Limits) -> ArraySpec:
    if type(item) is not dict or item.keys() != {"name", "dtype", "shape"}:
        raise WireError(f"an entry of header 'arrays' is not {{name, dtype, shape}}: {show(item)}")
    name, dtype, shape = item["name"], item["dtype"], item["shape"]
    if not is_text(name):
        raise WireError(f"an array name is not valid text: {show(name)}")
    if type(dtype) is not str or dtype not in LITTLE_ENDIAN:
        raise WireError(f"array {show(name)} has dtype {show(dtype)}, not one of {DTYPES}")
    if type(shape) is not list or any(type(n) is not int or n < 0 for n in shape):
        raise WireError(f"array {show(name)} has shape {show(shape)}, not a list of ints >= 0")
    _check_limit(limits, "max_ndim", len(shape), f"array {show(name)} has {len(shape)} dims")
    # Bound the product of the dims even when one is 0: numpy refuses shapes that overflow.
    extent = LITTLE_ENDIAN[dtype].itemsize * math.prod(max(n, 1) for n in shape)
    what = f"array {show(name)} of shape {show(tuple(shape))} and dtype {dtype}"
    _check_limit(limits, "max_total_array_bytes", extent, f"{what} spans {show(extent)} bytes")
    return ArraySpec(name, LITTLE_ENDIAN[dtype], tuple(shape), position + -position % ALIGNMENT)
