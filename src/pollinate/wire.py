"""Message <-> bytes: the one place in pollinate that parses untrusted bytes.

Invariant: ``decode`` and ``Decoder`` never raise anything but ``WireError``, whatever bytes
they are given (malformed, truncated, over-long, over a limit, hostile). Nothing is unpickled or
evaluated: arrays travel as raw little-endian buffers described by a JSON header.

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

A dtype is one of the names in ``DTYPES``. The decoder checks exact types, ``Limits`` (before
anything is allocated), that bool data is 0 or 1, that padding is zero and that the length is
exact.

>>> message = Message("fit", arrays=Arrays({"w": np.arange(3.0)}), config={"lr": 0.1})
>>> decode(encode(message)).arrays["w"]
array([0., 1., 2.])
"""

from __future__ import annotations

import base64
import json
import math
import reprlib
import struct
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any, TypeGuard

import numpy as np

from pollinate.errors import WireError
from pollinate.records import (
    ARRAY_DTYPES,
    MESSAGE_KINDS,
    Arrays,
    Message,
    Scalar,
)

__all__ = [
    "DEFAULT_LIMITS",
    "DTYPES",
    "MAGIC",
    "Decoder",
    "Limits",
    "decode",
    "encode",
    "iter_encode",
]

MAGIC = b"PLN\x01"
ALIGNMENT = 64
DTYPES = ARRAY_DTYPES
_LITTLE = {name: np.dtype(name).newbyteorder("<") for name in DTYPES}
_PREFIX = 8  # magic + header length
_INT64_MAX = 2**63 - 1
_FIELDS: dict[str, tuple[type, ...]] = {
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
_HEADER_KEYS = frozenset({*_FIELDS, "config", "metrics", "arrays"})
_TAG_TYPES: dict[str, type] = {"bool": bool, "int": int, "float": float, "str": str, "bytes": str}

# Untrusted values are shown in errors through this, so an error never dumps megabytes.
_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = 60
_show = _repr.repr


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


# --- encoding ---------------------------------------------------------------------------------


def encode(message: Message) -> bytes:
    """The wire bytes of ``message``; raise TypeError/ValueError if it cannot travel."""
    return b"".join(_pieces(*_plan(message)))


def iter_encode(message: Message, chunk_size: int = 4 << 20) -> Iterator[bytes | memoryview]:
    """The bytes of ``encode(message)`` in pieces of at most ``chunk_size`` bytes.

    Contiguous little-endian arrays are sent as memoryview slices of their own data, so a large
    model streams without a second copy. The message is fully checked before the first piece.
    """
    if type(chunk_size) is not int or chunk_size < 1:
        raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
    return _chunks(_pieces(*_plan(message)), chunk_size)


def _chunks(pieces: Iterator[bytes | memoryview], size: int) -> Iterator[bytes | memoryview]:
    for piece in pieces:
        for start in range(0, len(piece), size):
            yield piece[start : start + size]


def _plan(message: Message) -> tuple[bytes, list[np.ndarray]]:
    """Check ``message`` and return its prefix + header, and its arrays."""
    # Message checked its arrays' dtypes and its config and metrics when it was made.
    arrays = message.arrays
    header = {
        **{name: _field_value(message, name) for name in _FIELDS},
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
    yield head
    position = len(head)
    for array in arrays:
        padding = -position % ALIGNMENT
        little = array.astype(_LITTLE[array.dtype.name], order="C", copy=False)
        data = little.reshape(-1).view(np.uint8).data
        yield bytes(padding)
        yield data
        position += padding + len(data)


def _field_value(message: Message, name: str) -> Any:
    value = getattr(message, name)
    value = value.item() if isinstance(value, np.generic) else value
    if name == "loss" and type(value) is int:
        value = float(value)
    problem = _field_problem(name, value)
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


# --- checks shared by both directions ------------------------------------------------------


def _field_problem(name: str, value: object) -> tuple[type[Exception], str] | None:
    """What is wrong with a Message field's value, as (exception class, text), or None."""
    allowed = _FIELDS[name]
    if type(value) not in allowed:
        wanted = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
        return TypeError, f"must be {wanted}, got {type(value).__name__}"
    if type(value) is int and not 0 <= value <= _INT64_MAX:
        return ValueError, f"must be in 0..2**63-1, got {_show(value)}"
    if type(value) is str and not _is_text(value):
        return ValueError, f"is not valid Unicode (it holds a lone surrogate): {_show(value)}"
    if name == "kind" and value not in MESSAGE_KINDS:
        return ValueError, f"must be one of {', '.join(MESSAGE_KINDS)}, got {_show(value)}"
    return None


def _is_text(value: object) -> TypeGuard[str]:
    """A str that is valid Unicode: JSON escapes like \\ud800 can smuggle in lone surrogates."""
    if type(value) is not str:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# --- decoding ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Spec:
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
            f"array {_show(self.name)} declares shape {_show(self.shape)} of {self.dtype.name}"
            f" = {self.nbytes} bytes"
        )


@dataclass(frozen=True, slots=True)
class _Header:
    kwargs: dict[str, Any]  # Message fields but arrays
    specs: list[_Spec]
    end: int  # the exact length of the message


def decode(data: bytes | bytearray | memoryview, limits: Limits = DEFAULT_LIMITS) -> Message:
    """The Message in ``data``, whose arrays are views into ``data`` (no copy); or WireError.

    >>> decode(b"GET / HTTP/1.1")
    Traceback (most recent call last):
    pollinate.errors.WireError: not a pollinate message: it starts with b'GET ', not b'PLN\\x01'
    """
    view = _byte_view(data)
    if len(view) < _PREFIX:
        _check_magic(bytes(view))
        raise WireError(f"the message is truncated: {len(view)} bytes, less than the 8-byte prefix")
    length = _header_length(bytes(view[:_PREFIX]), limits)
    if len(view) < _PREFIX + length:
        raise WireError(
            f"header declares {length} bytes but only {len(view) - _PREFIX} bytes follow:"
            " the message is truncated"
        )
    header = _parse_header(bytes(view[_PREFIX : _PREFIX + length]), limits)
    _check_length(header, len(view))
    arrays: dict[str, np.ndarray] = {}
    position = _PREFIX + length
    for spec in header.specs:
        _check_padding(view[position : spec.offset], spec)
        count = spec.nbytes // spec.dtype.itemsize
        arrays[spec.name] = np.frombuffer(view, spec.dtype, count, spec.offset).reshape(spec.shape)
        position = spec.end
    return _message(header, arrays)


class Decoder:
    """Decode one message from chunks of any size, holding about one copy of it in memory.

    The header is checked as soon as it has arrived; each array is allocated when its first
    byte arrives (sizes were checked against the limits with the header) and filled straight
    from the chunks. Garbage is rejected at the first
    chunk that proves it invalid, and the Decoder then refuses further use.

    >>> decoder = Decoder()
    >>> for chunk in iter_encode(Message("fit", config={"lr": 0.1}), chunk_size=16):
    ...     decoder.feed(chunk)
    >>> decoder.finish().config
    {'lr': 0.1}
    """

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self._limits = limits
        self._head = bytearray()  # prefix and header, until the header is parsed
        self._length: int | None = None  # of the header, once the prefix has arrived
        self._header: _Header | None = None
        self._arrays: dict[str, np.ndarray] = {}
        # Still to arrive, in order: (start, end, spec, whether the region is padding).
        self._regions: deque[tuple[int, int, _Spec, bool]] = deque()
        self._position = 0  # bytes received
        self._error: WireError | None = None

    def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        """Take the next bytes of the message; raise WireError once they cannot be valid."""
        self._check_usable()
        try:
            view = _byte_view(chunk)
            while view:
                view = view[self._take(view) :]
        except WireError as error:
            self._error = error
            raise

    @property
    def array_bytes(self) -> int | None:
        """Bytes of array data the message declares, once its header is in (None before)."""
        return None if self._header is None else sum(s.nbytes for s in self._header.specs)

    def finish(self) -> Message:
        """The message, if exactly one whole message was fed; else WireError."""
        self._check_usable()
        try:
            if self._header is None or self._regions:
                raise WireError(self._truncation())
            ordered = {spec.name: self._arrays[spec.name] for spec in self._header.specs}
            return _message(self._header, ordered)
        except WireError as error:
            self._error = error
            raise

    def _check_usable(self) -> None:
        if self._error is not None:
            raise WireError(f"this Decoder already rejected its input: {self._error}")

    def _take(self, view: memoryview) -> int:
        """Consume bytes from the front of ``view``; return how many."""
        taken = self._take_head(view) if self._header is None else self._take_body(view)
        self._position += taken
        return taken

    def _take_head(self, view: memoryview) -> int:
        need = _PREFIX + (self._length or 0) - len(self._head)
        self._head += view[:need]
        if self._length is None:
            if len(self._head) < _PREFIX:
                _check_magic(bytes(self._head))
                return min(need, len(view))
            self._length = _header_length(bytes(self._head), self._limits)
        if len(self._head) == _PREFIX + self._length:
            self._start_body(_parse_header(bytes(self._head[_PREFIX:]), self._limits))
        return min(need, len(view))

    def _start_body(self, header: _Header) -> None:
        self._header, position = header, len(self._head)
        for spec in header.specs:
            if spec.offset > position:
                self._regions.append((position, spec.offset, spec, True))
            if spec.nbytes:
                self._regions.append((spec.offset, spec.end, spec, False))
            else:
                self._arrays[spec.name] = _allocate(spec)
            position = spec.end
        self._head = bytearray()

    def _take_body(self, view: memoryview) -> int:
        if not self._regions:
            end = self._header.end if self._header else 0
            raise WireError(f"unexpected bytes after the end of the message at byte {end}")
        start, end, spec, is_padding = self._regions[0]
        piece = view[: end - self._position]
        if is_padding:
            _check_padding(piece, spec)
        else:
            self._fill(spec, self._position - start, piece)
        if self._position + len(piece) == end:
            self._regions.popleft()
        return len(piece)

    def _fill(self, spec: _Spec, at: int, piece: memoryview) -> None:
        # Allocate an array when its first byte arrives, not when the header declares it, so
        # a short message cannot make the receiver reserve its declared (maybe huge) sizes.
        array = self._arrays.get(spec.name)
        if array is None:
            array = self._arrays[spec.name] = _allocate(spec)
        target = array.reshape(-1).view(np.uint8)
        target[at : at + len(piece)] = np.frombuffer(piece, np.uint8)

    def _truncation(self) -> str:
        if self._length is None:
            return f"the message is truncated: got {len(self._head)} of the 8 prefix bytes"
        if self._header is None:
            got = len(self._head) - _PREFIX
            return f"header declares {self._length} bytes but only {got} arrived: truncated message"
        return _truncated(self._regions[0][2], self._position, "arrived")


def _byte_view(data: bytes | bytearray | memoryview) -> memoryview:
    view = memoryview(data)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def _check_magic(start: bytes) -> None:
    if MAGIC.startswith(start[:4]):
        return
    if start[:3] == MAGIC[:3]:
        raise WireError(
            f"wire format version {start[3]} is not supported; this pollinate reads version "
            f"{MAGIC[3]}: run the same pollinate version on the hub and every node"
        )
    raise WireError(f"not a pollinate message: it starts with {bytes(start[:4])!r}, not {MAGIC!r}")


def _header_length(prefix: bytes, limits: Limits) -> int:
    _check_magic(prefix)
    length: int = struct.unpack_from("<I", prefix, 4)[0]
    _check_limit(limits, "max_header_bytes", length, f"header declares {length} bytes")
    return length


def _check_limit(limits: Limits, name: str, value: int, what: str) -> None:
    limit = getattr(limits, name)
    if value > limit:
        raise WireError(f"{what}, over the limit of {limit} (Limits.{name})")


def _parse_header(raw: bytes, limits: Limits) -> _Header:
    obj = _load_json(raw)
    if type(obj) is not dict:
        raise WireError(f"header must be a JSON object, got a JSON {type(obj).__name__}")
    missing, unknown = _HEADER_KEYS - obj.keys(), obj.keys() - _HEADER_KEYS
    if missing or unknown:
        raise WireError(f"header lacks keys {sorted(missing)}, has unknown keys {_show(unknown)}")
    kwargs = {name: _checked_field(name, obj[name]) for name in _FIELDS}
    kwargs["config"] = _untag_all(obj["config"], "config")
    kwargs["metrics"] = _untag_all(obj["metrics"], "metrics")
    specs = _specs(obj["arrays"], _PREFIX + len(raw), limits)
    return _Header(kwargs, specs, specs[-1].end if specs else _PREFIX + len(raw))


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
        raise WireError(f"header repeats the key {_show(key)} in one JSON object")
    return obj


def _checked_field(name: str, value: object) -> object:
    problem = _field_problem(name, value)
    if problem is not None:
        raise WireError(f"header field {name!r} {problem[1]}")
    return value


def _untag_all(obj: object, what: str) -> dict[str, Scalar]:
    if type(obj) is not dict:
        raise WireError(f"header {what!r} must be a JSON object, got {type(obj).__name__}")
    for key in obj:
        if not _is_text(key):
            raise WireError(f"header {what!r} has a key that is not valid Unicode: {_show(key)}")
    return {key: _untag(value, f"{what} entry {_show(key)}") for key, value in obj.items()}


def _untag(item: object, where: str) -> Scalar:
    if not isinstance(item, list) or len(item) != 2:  # json makes only plain lists
        raise WireError(f"{where} must be a [tag, value] pair, got {_show(item)}")
    tag, value = item
    if type(tag) is not str or tag not in _TAG_TYPES:
        raise WireError(f"{where} has tag {_show(tag)}, not one of {', '.join(_TAG_TYPES)}")
    if not _holds(value, _TAG_TYPES[tag]):
        raise WireError(f"{where} is tagged {tag!r} but holds {_show(value)}")
    return _unbase64(value, where) if tag == "bytes" else value


def _holds(value: object, kind: type) -> bool:
    return type(value) is kind and (kind is not str or _is_text(value))


def _unbase64(text: str, where: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise WireError(f"{where} is tagged 'bytes' but is not base64: {_show(text)}") from None


def _specs(items: object, position: int, limits: Limits) -> list[_Spec]:
    if type(items) is not list:
        raise WireError(f"header 'arrays' must be a JSON list, got {type(items).__name__}")
    _check_limit(limits, "max_arrays", len(items), f"header declares {len(items)} arrays")
    specs: list[_Spec] = []
    names: set[str] = set()
    total = 0
    for item in items:
        spec = _spec(item, position, limits)
        if spec.name in names:
            raise WireError(f"array name {_show(spec.name)} appears twice")
        total += spec.nbytes
        what = f"arrays declare {total} bytes in total up to {spec.describe()}"
        _check_limit(limits, "max_total_array_bytes", total, what)
        names.add(spec.name)
        specs.append(spec)
        position = spec.end
    return specs


def _spec(item: object, position: int, limits: Limits) -> _Spec:
    if type(item) is not dict or item.keys() != {"name", "dtype", "shape"}:
        raise WireError(f"an entry of header 'arrays' is not {{name, dtype, shape}}: {_show(item)}")
    name, dtype, shape = item["name"], item["dtype"], item["shape"]
    if not _is_text(name):
        raise WireError(f"an array name is not valid text: {_show(name)}")
    if type(dtype) is not str or dtype not in _LITTLE:
        raise WireError(f"array {_show(name)} has dtype {_show(dtype)}, not one of {DTYPES}")
    if type(shape) is not list or any(type(n) is not int or n < 0 for n in shape):
        raise WireError(f"array {_show(name)} has shape {_show(shape)}, not a list of ints >= 0")
    _check_limit(limits, "max_ndim", len(shape), f"array {_show(name)} has {len(shape)} dims")
    # Bound the product of the dims even when one is 0: numpy refuses shapes that overflow.
    extent = _LITTLE[dtype].itemsize * math.prod(max(n, 1) for n in shape)
    what = f"array {_show(name)} of shape {_show(tuple(shape))} and dtype {dtype}"
    _check_limit(limits, "max_total_array_bytes", extent, f"{what} spans {_show(extent)} bytes")
    return _Spec(name, _LITTLE[dtype], tuple(shape), position + -position % ALIGNMENT)


def _check_length(header: _Header, size: int) -> None:
    if size > header.end:
        raise WireError(f"{size - header.end} unexpected bytes after the end of the message")
    for spec in header.specs:
        if spec.end > size:
            raise WireError(_truncated(spec, size, "remain"))


def _truncated(spec: _Spec, size: int, verb: str) -> str:
    if size < spec.offset:
        name = _show(spec.name)
        return f"the message is truncated at byte {size}, in the padding before array {name}"
    return f"{spec.describe()} but only {size - spec.offset} bytes {verb}: the message is truncated"


def _check_padding(padding: memoryview, spec: _Spec) -> None:
    if any(padding):
        raise WireError(f"the padding before array {_show(spec.name)} is not all zero bytes")


def _allocate(spec: _Spec) -> np.ndarray:
    try:
        return np.empty(spec.shape, spec.dtype)
    except (MemoryError, ValueError):
        raise WireError(f"{spec.describe()}, which cannot be allocated here") from None


def _message(header: _Header, arrays: dict[str, np.ndarray]) -> Message:
    for name, array in arrays.items():
        if array.dtype == np.bool_ and array.view(np.uint8).max(initial=0) > 1:
            raise WireError(f"bool array {_show(name)} holds bytes other than 0 and 1")
    return Message(arrays=Arrays(arrays), **header.kwargs)
