"""Bytes -> Message: ``decode`` a whole buffer, or feed a ``Decoder`` chunk by chunk.

Invariant: ``decode`` and ``Decoder`` never raise anything but ``WireError``, whatever bytes
they are given. The header is checked (``header.py``) before any array is allocated; here the
arrays' bytes are checked: padding is zero, bool data is 0 or 1, and the length is exact.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from pollinate.errors import WireError
from pollinate.records import Arrays, Message
from pollinate.recycle import Recycler
from pollinate.wire.format import DEFAULT_LIMITS, PREFIX_BYTES, Limits, show
from pollinate.wire.header import ArraySpec, Header, check_magic, header_length, parse_header


def decode(data: bytes | bytearray | memoryview, limits: Limits = DEFAULT_LIMITS) -> Message:
    """The Message in ``data``, whose arrays are views into ``data`` (no copy); or WireError.

    >>> decode(b"GET / HTTP/1.1")
    Traceback (most recent call last):
    pollinate.errors.WireError: not a pollinate message: it starts with b'GET ', not b'PLN\\x01'
    """
    view = _byte_view(data)
    if len(view) < PREFIX_BYTES:
        check_magic(bytes(view))
        raise WireError(f"the message is truncated: {len(view)} bytes, less than the 8-byte prefix")
    length = header_length(bytes(view[:PREFIX_BYTES]), limits)
    if len(view) < PREFIX_BYTES + length:
        raise WireError(
            f"header declares {length} bytes but only {len(view) - PREFIX_BYTES} bytes follow:"
            " the message is truncated"
        )
    header = parse_header(bytes(view[PREFIX_BYTES : PREFIX_BYTES + length]), limits)
    _check_length(header, len(view))
    arrays: dict[str, np.ndarray] = {}
    position = PREFIX_BYTES + length
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

    >>> from pollinate.wire import iter_encode
    >>> decoder = Decoder()
    >>> for chunk in iter_encode(Message("fit", config={"lr": 0.1}), chunk_size=16):
    ...     decoder.feed(chunk)
    >>> decoder.finish().config
    {'lr': 0.1}
    """

    def __init__(self, limits: Limits = DEFAULT_LIMITS, recycler: Recycler | None = None) -> None:
        self._limits = limits
        self._recycler = recycler  # arrays to decode into again (``recycle.py``)
        self._head = bytearray()  # prefix and header, until the header is parsed
        self._length: int | None = None  # of the header, once the prefix has arrived
        self._header: Header | None = None
        self._arrays: dict[str, np.ndarray] = {}
        # Still to arrive, in order: (start, end, spec, whether the region is padding).
        self._regions: deque[tuple[int, int, ArraySpec, bool]] = deque()
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

    def feed_head(self, chunk: bytes | bytearray | memoryview) -> int:
        """Take header bytes only from the front of ``chunk``; return how many it took. For a
        receiver that keeps the body itself (the hub writes a reply to its journal file as it
        comes, then decodes the file whole): no array is allocated here."""
        self._check_usable()
        view, taken = _byte_view(chunk), 0
        try:
            while view and self._header is None:
                step = self._take(view)
                view, taken = view[step:], taken + step
        except WireError as error:
            self._error = error
            raise
        return taken

    @property
    def size(self) -> int | None:
        """The whole message's bytes, once its header is in (None before)."""
        return None if self._header is None else self._header.end

    @property
    def array_bytes(self) -> int | None:
        """Bytes of array data the message declares, once its header is in (None before)."""
        return None if self._header is None else sum(s.nbytes for s in self._header.specs)

    @property
    def head(self) -> Message | None:
        """The message without its arrays, once its header is in (None before): its task,
        run, round and metrics, so a receiver can refuse it before any array byte comes."""
        return None if self._header is None else Message(**self._header.kwargs)

    def finish(self) -> Message:
        """The message, if exactly one whole message was fed; else WireError."""
        self._check_usable()
        try:
            if self._header is None or self._regions:
                raise WireError(self._truncation())
            ordered = {spec.name: self._arrays[spec.name] for spec in self._header.specs}
            message = _message(self._header, ordered)
        except WireError as error:
            self._error = error
            raise
        if self._recycler is not None:
            self._recycler.keep(ordered.values())
        return message

    def _check_usable(self) -> None:
        if self._error is not None:
            raise WireError(f"this Decoder already rejected its input: {self._error}")

    def _take(self, view: memoryview) -> int:
        """Consume bytes from the front of ``view``; return how many."""
        taken = self._take_head(view) if self._header is None else self._take_body(view)
        self._position += taken
        return taken

    def _take_head(self, view: memoryview) -> int:
        need = PREFIX_BYTES + (self._length or 0) - len(self._head)
        self._head += view[:need]
        if self._length is None:
            if len(self._head) < PREFIX_BYTES:
                check_magic(bytes(self._head))
                return min(need, len(view))
            self._length = header_length(bytes(self._head), self._limits)
        if len(self._head) == PREFIX_BYTES + self._length:
            self._start_body(parse_header(bytes(self._head[PREFIX_BYTES:]), self._limits))
        return min(need, len(view))

    def _start_body(self, header: Header) -> None:
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

    def _fill(self, spec: ArraySpec, at: int, piece: memoryview) -> None:
        # Allocate an array when its first byte arrives, not when the header declares it, so
        # a short message cannot make the receiver reserve its declared (maybe huge) sizes.
        array = self._arrays.get(spec.name)
        if array is None:
            reused = None if self._recycler is None else self._recycler.take(spec.shape, spec.dtype)
            array = self._arrays[spec.name] = _allocate(spec) if reused is None else reused
        target = array.reshape(-1).view(np.uint8)
        target[at : at + len(piece)] = np.frombuffer(piece, np.uint8)

    def _truncation(self) -> str:
        if self._length is None:
            return f"the message is truncated: got {len(self._head)} of the 8 prefix bytes"
        if self._header is None:
            got = len(self._head) - PREFIX_BYTES
            return f"header declares {self._length} bytes but only {got} arrived: truncated message"
        return _truncated(self._regions[0][2], self._position, "arrived")


def _byte_view(data: bytes | bytearray | memoryview) -> memoryview:
    view = memoryview(data)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def _check_length(header: Header, size: int) -> None:
    if size > header.end:
        raise WireError(f"{size - header.end} unexpected bytes after the end of the message")
    for spec in header.specs:
        if spec.end > size:
            raise WireError(_truncated(spec, size, "remain"))


def _truncated(spec: ArraySpec, size: int, verb: str) -> str:
    if size < spec.offset:
        name = show(spec.name)
        return f"the message is truncated at byte {size}, in the padding before array {name}"
    return f"{spec.describe()} but only {size - spec.offset} bytes {verb}: the message is truncated"


def _check_padding(padding: memoryview, spec: ArraySpec) -> None:
    if any(padding):
        raise WireError(f"the padding before array {show(spec.name)} is not all zero bytes")


def _allocate(spec: ArraySpec) -> np.ndarray:
    try:
        return np.empty(spec.shape, spec.dtype)
    except (MemoryError, ValueError):
        raise WireError(f"{spec.describe()}, which cannot be allocated here") from None


def _message(header: Header, arrays: dict[str, np.ndarray]) -> Message:
    for name, array in arrays.items():
        if array.dtype == np.bool_ and array.view(np.uint8).max(initial=0) > 1:
            raise WireError(f"bool array {show(name)} holds bytes other than 0 and 1")
    return Message(arrays=Arrays(arrays), **header.kwargs)
