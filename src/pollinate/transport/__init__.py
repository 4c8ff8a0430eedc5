"""gRPC transport between hub, nodes and users: the only package that imports ``grpc``."""

__all__ = [
    "CHUNK_BYTES",
    "CONTROL_SERVICE",
    "FLEET_SERVER_OPTIONS",
    "FLEET_SERVICE",
    "NODE_CHANNEL_OPTIONS",
    "NODE_ID_HEADER",
    "chunk_data",
    "data_chunk",
    "rounds_from_wire",
    "rounds_to_wire",
]

CHUNK_BYTES = 1 << 20
"""Arrays travel in wire chunks of at most this many bytes, in both directions."""

NODE_ID_HEADER = "pollinate-node-id"
"""Metadata key that carries a node's id in insecure mode (mTLS takes it from the certificate)."""

FLEET_SERVICE = "pollinate.v1.Fleet"
CONTROL_SERVICE = "pollinate.v1.Control"

# A node finds out within ~15 s that its connection died (a partition, a hub restarted behind
# a NAT) rather than waiting on TCP's retransmission backoff, and redials at most 5 s apart
# once it did; the hub accepts the pings this takes.
NODE_CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.max_reconnect_backoff_ms", 5_000),
]
UPLOAD_WINDOW = 2 << 20
"""Bytes a node may send on a call before the hub reads them (HTTP/2 flow control): what a
node that sends its reply's arrays before the hub gave it a place in the upload budget
(``guards.TransferBudget``; honest nodes wait) holds at the hub. gRPC's default probes the
link and widens each window to several MB on loopback (17-28 MB of hub memory per waiting
node, measured); 2 MiB still keeps a 50 ms link at ~40 MB/s per node."""

FLEET_SERVER_OPTIONS = [
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.http2.bdp_probe", 0),
    ("grpc.http2.lookahead_bytes", UPLOAD_WINDOW),
]


def rounds_to_wire(rounds: int | None) -> int:
    """A run's ``rounds`` as the control API sends it: -1 for None (the app's own number).

    >>> rounds_to_wire(None), rounds_to_wire(5)
    (-1, 5)
    """
    return -1 if rounds is None else rounds


def rounds_from_wire(value: int) -> int | None:
    """A run's ``rounds`` as the control API received it: None for a negative number.

    >>> rounds_from_wire(-1), rounds_from_wire(0)
    (None, 0)
    """
    return None if value < 0 else value


def data_chunk(piece: bytes | memoryview) -> bytes:
    """The protobuf bytes of ``Chunk(data=piece)``, which are also those of
    ``TaskChunk(data=piece)`` (field 1, length-delimited), made with one copy of ``piece``.

    Bulk chunks are serialized here, not by protobuf: upb's ``SerializeToString`` grows its
    output buffer in fresh memory and took ~1.6 ms per MiB (page faults), against ~0.03 ms for
    this (benchmarks/README.md, Deployment). The receiving side still parses with protobuf.
    """
    size, head = len(piece), bytearray(b"\x0a")
    while size > 0x7F:
        head.append(size & 0x7F | 0x80)
        size >>= 7
    head.append(size)
    return bytes(head) + piece


def chunk_data(raw: bytes) -> memoryview | None:
    """The data of a serialized ``Chunk`` (or data-only ``TaskChunk``) laid out as
    ``data_chunk`` lays it out, as a view of ``raw`` (no copy); None for any other layout,
    which the caller parses with protobuf. Nothing else is accepted: field 1, length-delimited,
    its length exactly what follows.

    >>> bytes(chunk_data(data_chunk(b"abc")))
    b'abc'
    >>> chunk_data(b"\\x0a\\x05abc") is None  # a length that is not what follows
    True
    """
    if len(raw) < 2 or raw[0] != 0x0A:
        return None
    size, at = 0, 1
    for shift in range(0, 35, 7):  # a length of at most 5 varint bytes
        byte = raw[at]
        size |= (byte & 0x7F) << shift
        at += 1
        if not byte & 0x80:
            break
        if at == len(raw):
            return None
    else:
        return None
    return memoryview(raw)[at:] if at + size == len(raw) else None
