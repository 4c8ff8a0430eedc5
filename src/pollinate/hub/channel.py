"""The local API between the hub and a run process: small length-prefixed frames on a socket.

Each run's server side runs in a process of its own (``run_process.py``) that reaches the hub
only through one end of a socketpair; the hub (``supervisor.py``) holds the other. On it::

    frame  = length: u32 big-endian | kind: u8 | body: `length` bytes
    kind 1 = JSON   a UTF-8 JSON object {"op": ..., ...}, at most `max_json` bytes
    kind 2 = CHUNK  the next piece of a wire message (``pollinate.wire``), at most CHUNK bytes
    kind 3 = END    the wire message whose chunks came before is complete (empty body)
    kind 4 = MAPPED a whole wire message in a sealed memfd, sent with this frame (SCM_RIGHTS);
                    body: its size, u64 big-endian

A JSON frame with ``"messages": n`` is followed by n wire messages, each as CHUNK frames and
one END, or (from ``MAPPED_BYTES`` on) as one MAPPED frame; a message is at most
`max_message` bytes. Nothing is pickled: a run process is as untrusted as a node, and what it
sends is parsed by ``json`` and ``pollinate.wire`` alone.

Why MAPPED: a round's replies (K models) cross to the run process, and through the socket
each byte was copied four times (into the kernel, out into a fresh frame, into the growing
message; the fresh pages cost more than the copies here). Written once into a memfd and
mapped by the receiver, a message is copied once. The receiver maps only a memfd sealed
against writing, growing and shrinking, so a hostile sender can neither change a message
once it is checked nor cut it short under the reader's feet (a SIGBUS).

A message may also be a ``File`` the sender wrote before (the hub's journal of a reply): it
goes MAPPED as it is, and only a channel told ``files_from_peer`` (the run process's, whose
peer is the hub) maps a plain, unsealed file.

Invariant: ``Channel.receive`` raises only ``ChannelError`` (the peer broke the format or a
limit; nothing beyond the limit was read into memory; a descriptor that came with a refused
frame is closed) and ``ChannelClosed`` (the peer is gone).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import socket
import stat
import struct
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pollinate.errors import PollinateError
from pollinate.hub.sealed import SealedError, map_file, map_sealed, write_sealed
from pollinate.loop.events import (
    Event,
    ReplyBounded,
    ReplyReceived,
    RoundFinished,
    Stage,
    StageStarted,
    TaskFailed,
    UpdateRejected,
)
from pollinate.loop.history import Failure, FailureKind, RoundRecord
from pollinate.records import check_scalars
from pollinate.text import MAX_LINE, MAX_TEXT, inert

JSON, CHUNK, END, MAPPED = 1, 2, 3, 4
CHUNK_BYTES = 4 << 20
MAPPED_BYTES = 1 << 20
"""Messages from this size on travel MAPPED; smaller ones are cheaper as a few frames."""
MAX_MESSAGES = 10_000
_HEAD = struct.Struct(">IB")
_SIZE = struct.Struct(">Q")
_FD_ROOM = socket.CMSG_SPACE(struct.calcsize("i"))  # one descriptor per frame, no more

Chunks = Iterable[bytes | memoryview]
"""A wire message as ``pollinate.wire.iter_encode`` gives it."""


@dataclass(frozen=True)
class File:
    """A wire message already whole in a file, open as ``fd`` (read-only), sent as it is;
    ``send`` closes ``fd``, sent or not."""

    fd: int


class ChannelError(PollinateError):
    """The peer sent something the channel's format or limits do not allow."""


class ChannelClosed(ChannelError):
    """The peer closed its end (it exited, or was killed)."""


class Channel:
    """One end of a socket carrying frames; ``send`` may be called from several threads."""

    def __init__(
        self,
        sock: socket.socket,
        *,
        max_json: int,
        max_message: int,
        files_from_peer: bool = False,
    ) -> None:
        self.sock = sock
        self.max_json, self.max_message = max_json, max_message
        self.files_from_peer = files_from_peer
        """Whether the peer may send plain files (``File``): only the hub, which is trusted."""
        self._send_lock = threading.Lock()

    def send(self, op: dict[str, Any], messages: Sequence[Chunks | File] = ()) -> None:
        """Send ``op`` (``messages`` is set to how many wire messages follow) and the messages."""
        files = [message.fd for message in messages if isinstance(message, File)]
        try:
            body = json.dumps({**op, "messages": len(messages)}, allow_nan=False).encode()
            with self._send_lock:
                self._frame(JSON, body)
                for message in messages:
                    if isinstance(message, File):
                        self._send_descriptor(message.fd)
                    else:
                        self._send_message(message)
        finally:  # sent or not: the peer has its own descriptor of each
            _close(files)

    def receive(self) -> tuple[dict[str, Any], list[memoryview]]:
        """The next op and the bytes of the wire messages that came with it (read-only
        views of a mapping for large ones)."""
        kind, body, _ = self._read_frame(self.max_json)
        if kind != JSON:
            raise ChannelError(f"expected a JSON frame, got kind {kind}")
        try:
            op = json.loads(body.decode())
        except (UnicodeDecodeError, ValueError) as exc:
            raise ChannelError(f"a JSON frame that is not JSON: {exc}") from None
        if not isinstance(op, dict) or not isinstance(op.get("op"), str):
            raise ChannelError("a JSON frame that is not an object with an 'op'")
        count = op.get("messages", 0)
        if type(count) is not int or not 0 <= count <= MAX_MESSAGES:
            raise ChannelError(f"'messages' must be an int in 0..{MAX_MESSAGES}")
        return op, [self._read_message() for _ in range(count)]

    def close(self) -> None:
        self.sock.close()

    def _frame(self, kind: int, body: bytes | memoryview) -> None:
        self.sock.sendall(_HEAD.pack(len(body), kind))
        if len(body):
            self.sock.sendall(body)

    def _send_message(self, chunks: Chunks) -> None:
        """One wire message: as CHUNK frames and END while it is small, else MAPPED."""
        pieces: list[memoryview] = []
        size = 0
        iterator = iter(chunks)
        for chunk in iterator:
            view = memoryview(chunk).cast("B")
            pieces.append(view)
            size += len(view)
            if size >= MAPPED_BYTES:  # the rest is written as it comes, never held
                rest = (memoryview(c).cast("B") for c in iterator)
                self._send_mapped(itertools.chain(pieces, rest))
                return
        for view in pieces:
            for at in range(0, len(view), CHUNK_BYTES):
                self._frame(CHUNK, view[at : at + CHUNK_BYTES])
        self._frame(END, b"")

    def _send_mapped(self, pieces: Iterable[memoryview]) -> None:
        fd = write_sealed(pieces)
        try:
            self._send_descriptor(fd)
        finally:
            os.close(fd)

    def _send_descriptor(self, fd: int) -> None:
        """A MAPPED frame with ``fd`` (the caller closes it)."""
        frame = _HEAD.pack(_SIZE.size, MAPPED) + _SIZE.pack(os.fstat(fd).st_size)
        sent = socket.send_fds(self.sock, [frame], [fd])
        self.sock.sendall(frame[sent:])  # the descriptor went with the first byte

    def _read_message(self) -> memoryview:
        data = bytearray()
        while True:
            kind, body, fd = self._read_frame(CHUNK_BYTES, mapped=not data)
            if kind == MAPPED:
                return self._mapping(fd, _SIZE.unpack(body)[0])
            if kind == END:
                return memoryview(data)
            if kind != CHUNK:
                raise ChannelError(f"expected a CHUNK, END or MAPPED frame, got kind {kind}")
            if len(data) + len(body) > self.max_message:
                raise ChannelError(f"a wire message over {self.max_message} bytes")
            data += body

    def _read_frame(self, limit: int, mapped: bool = False) -> tuple[int, bytearray, int]:
        """A frame's kind and body, and the descriptor of a MAPPED one (where ``mapped``
        allows one: first in a message); any other descriptor is closed and refused."""
        head, fds = self._read_head()
        length, kind = _HEAD.unpack(head)
        if kind == MAPPED and mapped and length == _SIZE.size and len(fds) == 1:
            try:
                return kind, self._read(length), fds[0]
            except ChannelClosed:
                _close(fds)
                raise
        _close(fds)
        if kind == MAPPED or fds:
            raise ChannelError(f"a frame of kind {kind} came with {len(fds)} descriptors")
        if kind not in (JSON, CHUNK, END):
            raise ChannelError(f"unknown frame kind {kind}")
        if length > limit:
            raise ChannelError(f"a frame of {length} bytes; the limit is {limit}")
        return kind, self._read(length), -1

    def _read_head(self) -> tuple[bytearray, list[int]]:
        """A frame's head, and the descriptors that came with it (read with ``recvmsg``:
        a plain read would drop them)."""
        head = bytearray(_HEAD.size)
        view, got = memoryview(head), 0
        fds: list[int] = []
        while got < len(head):
            try:
                n, ancillary, flags, _ = self.sock.recvmsg_into([view[got:]], _FD_ROOM)
            except OSError as exc:
                _close(fds)
                raise ChannelClosed(f"the channel failed: {exc}") from None
            fds += _descriptors(ancillary)
            if flags & socket.MSG_CTRUNC:
                fds.append(-1)  # more than room was made for: the kernel closed the rest
            if n == 0:
                _close(fds)
                raise ChannelClosed("the peer closed the channel")
            got += n
        return head, fds

    def _mapping(self, fd: int, size: int) -> memoryview:
        """The message in ``fd``: a sealed memfd (``sealed.py``), or a plain file from a
        trusted peer; at most ``max_message`` bytes. ``fd`` is closed either way (the mapping
        keeps the bytes)."""
        try:
            if size > self.max_message:
                raise ChannelError(
                    f"a mapped message of {size} bytes; the limit is {self.max_message}"
                )
            if self.files_from_peer and stat.S_ISREG(os.fstat(fd).st_mode):
                return map_file(fd, size)
            return map_sealed(fd, size)
        except (SealedError, OSError) as exc:
            raise ChannelError(f"a mapped message refused: {exc}") from None
        finally:
            os.close(fd)

    def _read(self, size: int) -> bytearray:
        buffer = bytearray(size)
        view = memoryview(buffer)
        got = 0
        while got < size:
            try:
                n = self.sock.recv_into(view[got:])
            except OSError as exc:
                raise ChannelClosed(f"the channel failed: {exc}") from None
            if n == 0:
                raise ChannelClosed("the peer closed the channel")
            got += n
        return buffer


def _descriptors(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(data) - len(data) % 4
            fds += struct.unpack(f"{usable // 4}i", data[:usable])
    return fds


def _close(fds: list[int]) -> None:
    for fd in fds:
        if fd >= 0:
            os.close(fd)


def ints(value: object, what: str) -> list[int]:
    """``value`` as a list of ints, or ChannelError."""
    if not isinstance(value, list) or any(type(v) is not int for v in value):
        raise ChannelError(f"{what} must be a list of ints")
    return list(value)


def field(op: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    """``op[name]``, which must be of ``kind`` (exactly: a bool is no int here); else
    ChannelError."""
    value = op.get(name)
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if type(value) not in kinds:
        raise ChannelError(f"{op.get('op')!r}: {name!r} must be {kind}, got {type(value).__name__}")
    return value


# --- what a run reports: events and round records, as JSON ---------------------------------

_EVENT_FIELDS: dict[str, tuple[type, dict[str, type]]] = {
    "StageStarted": (StageStarted, {"round": int, "stage": Stage, "tasks": int}),
    "ReplyReceived": (ReplyReceived, {"round": int, "stage": Stage, "node_id": int, "ok": bool}),
    "TaskFailed": (
        TaskFailed,
        {"round": int, "stage": Stage, "node_id": int, "kind": FailureKind},
    ),
    "UpdateRejected": (UpdateRejected, {"round": int, "node_id": int, "reason": str}),
    "ReplyBounded": (ReplyBounded, {"round": int, "stage": Stage, "node_id": int, "note": str}),
}


def event_to_json(event: Event) -> dict[str, Any]:
    if isinstance(event, RoundFinished):
        return {"type": "RoundFinished", "record": event.record.to_dict()}
    names = _EVENT_FIELDS[type(event).__name__][1]
    return {"type": type(event).__name__, **{name: getattr(event, name) for name in names}}


def event_from_json(data: object) -> Event:
    """The event ``event_to_json`` described, every field checked; else ChannelError."""
    if not isinstance(data, dict):
        raise ChannelError("an event must be an object")
    name = data.get("type")
    if name == "RoundFinished":
        return RoundFinished(record_from_json(data.get("record")))
    if name not in _EVENT_FIELDS:
        raise ChannelError(f"unknown event type {inert(repr(name), 80)}")
    cls, names = _EVENT_FIELDS[name]
    values: dict[str, Any] = {}
    for key, kind in names.items():
        value = data.get(key)
        if kind is Stage or kind is FailureKind:
            if not isinstance(value, str) or value not in set(kind):
                raise ChannelError(f"{name}: unknown {key} {inert(repr(value), 80)}")
            value = kind(value)
        elif type(value) is not kind:
            raise ChannelError(f"{name}: {key!r} must be {kind.__name__}")
        elif kind is str:
            value = inert(str(value), MAX_LINE)
        values[key] = value
    event: Event = cls(**values)
    return event


_RECORD_FIELDS: dict[str, tuple[type, ...]] = {
    "round": (int,),
    "replies": (int,),
    "failures": (int,),
    "rejected": (int,),
    "seconds": (int, float),
    "aggregation_seconds": (int, float),
    "applied": (bool,),
    "resumed": (bool,),
    "aborted": (str, type(None)),
}


def record_from_json(data: object) -> RoundRecord:
    """A round's record from a run process, every field checked; else ChannelError."""
    if not isinstance(data, dict) or set(data) - {*_RECORD_FIELDS, *_METRICS, "failed"}:
        raise ChannelError("a round record must be an object with RoundRecord's fields")
    for key, kinds in _RECORD_FIELDS.items():
        if key in data and type(data[key]) not in kinds:
            raise ChannelError(f"a round record's {key!r} is a {type(data[key]).__name__}")
    try:
        metrics = {key: check_scalars(_numbers(data.get(key, {})), key) for key in _METRICS}
        failed = [_failure(f) for f in _list(data.get("failed", []))]
    except (TypeError, ValueError) as exc:
        raise ChannelError(f"a round record: {inert(str(exc), MAX_TEXT)}") from None
    plain: dict[str, Any] = {key: data[key] for key in _RECORD_FIELDS if key in data}
    if isinstance(plain.get("aborted"), str):
        plain["aborted"] = inert(plain["aborted"], MAX_LINE)
    record = RoundRecord(**plain, failed=failed)
    record.fit, record.evaluate, record.centralized = (metrics[key] for key in _METRICS)
    return record


_METRICS = ("fit", "evaluate", "centralized")


def _numbers(value: object) -> dict[Any, Any]:
    """A metrics dict as ``RoundRecord.to_dict`` wrote it: NaN as null, read back as NaN."""
    if not isinstance(value, dict):
        raise TypeError("metrics must be an object")
    return {k: math.nan if v is None else v for k, v in value.items()}


def _list(value: object) -> list[Any]:
    if not isinstance(value, list):
        raise TypeError("'failed' must be a list")
    return value


def _failure(value: object) -> Failure:
    if (
        not isinstance(value, dict)
        or set(value) != {"node_id", "stage", "reason", "kind"}
        or type(value["node_id"]) is not int
        or not isinstance(value["stage"], str)
        or not isinstance(value["reason"], str)
        or value["kind"] not in set(FailureKind)
    ):
        raise TypeError(
            "a failure must be {node_id: int, stage: str, reason: str, kind: FailureKind}"
        )
    return Failure(value["node_id"], inert(value["stage"], 80), value["reason"], value["kind"])
