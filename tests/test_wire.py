"""pollinate.wire: Message <-> bytes, the one place that parses untrusted bytes.

The invariant under test throughout: ``decode`` and ``Decoder`` never raise anything but
WireError, whatever bytes they are given. Messages are laid out by hand with ``frame`` exactly as
the docstring of ``pollinate.wire.format`` specifies, so these tests also pin the format.
"""

from __future__ import annotations

import ast
import itertools
import json
import struct
from pathlib import Path
from typing import Any

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pollinate import wire
from pollinate.errors import WireError
from pollinate.records import MESSAGE_KINDS, Arrays, Message
from pollinate.text import MAX_TEXT, name_problem
from pollinate.wire import (
    DEFAULT_LIMITS,
    DTYPES,
    MAGIC,
    Decoder,
    Limits,
    decode,
    encode,
    iter_encode,
)

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
THOROUGH = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- helpers ----------------------------------------------------------------------------------


def fingerprint(message: Message) -> tuple[Any, ...]:
    """Everything a Message holds, exactly: types, bits of floats (nan, -0.0), array bytes."""

    def scalars(values: dict[str, Any]) -> list[tuple[str, str, str]]:
        return [(key, type(value).__name__, repr(value)) for key, value in values.items()]

    def arrays(values: Arrays) -> list[tuple[str, str, tuple[int, ...], bytes]]:
        out = []
        for name, array in values.items():
            little = array.dtype.newbyteorder("<")
            out.append((name, little.str, array.shape, array.astype(little).tobytes()))
        return out

    m = message
    meta = (m.kind, m.task_id, m.run_id, m.round, m.node_id, m.is_reply, m.num_examples)
    return (*meta, repr(m.loss), m.error, scalars(m.config), scalars(m.metrics), arrays(m.arrays))


def feed_in_chunks(data: bytes, sizes: list[int], limits: Limits = DEFAULT_LIMITS) -> Message:
    decoder = Decoder(limits)
    view = memoryview(data)
    for size in itertools.cycle(sizes):
        if not view:
            break
        decoder.feed(view[:size])
        view = view[size:]
    return decoder.finish()


def assert_rejected(data: bytes, match: str, limits: Limits = DEFAULT_LIMITS) -> str:
    """Both decoders reject ``data`` with a WireError matching ``match``; return decode's text."""
    with pytest.raises(WireError, match=match) as caught:
        decode(data, limits)
    with pytest.raises(WireError, match=match):
        feed_in_chunks(data, [7], limits)
    return str(caught.value)


def frame(header: object, *buffers: bytes) -> bytes:
    """Lay out a message by hand: magic, u32 header length, header, 64-byte aligned buffers."""
    if isinstance(header, str):
        header = header.encode()
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    out = bytearray(MAGIC + struct.pack("<I", len(raw)) + raw)
    for buffer in buffers:
        out += bytes(-len(out) % 64) + buffer
    return bytes(out)


def entry(name: Any = "fc1.weight", dtype: Any = "float32", shape: Any = (10, 4)) -> Any:
    return {
        "name": name,
        "dtype": dtype,
        "shape": list(shape) if isinstance(shape, tuple) else shape,
    }


def header(**changes: Any) -> dict[str, Any]:
    """A valid header with one float32 (10, 4) array, with ``changes`` applied."""
    base = {
        "kind": "fit",
        "task_id": "t1",
        "run_id": "r1",
        "round": 3,
        "node_id": 7,
        "is_reply": False,
        "num_examples": 0,
        "loss": None,
        "error": None,
        "config": {"lr": ["float", 0.1]},
        "metrics": {},
        "arrays": [entry()],
    }
    return {**base, **changes}


W = np.arange(40, dtype="<f4").tobytes()  # the data of header()'s array


def rich_message() -> Message:
    """A message using every part of the format, for truncation and mutation tests."""
    arrays = {
        "fc1.weight": np.arange(6, dtype=">f4").reshape(3, 2),
        "mask": np.array([True, False, True]),
        "step": np.array(5, dtype=np.int64),
        "empty": np.zeros((0, 2), np.complex64),
        "counts": np.array([1, 2, 65535], np.uint16),
    }
    config = {"lr": 0.5, "epochs": 2, "shuffle": True, "opt": "sgd", "seed": b"\x00\xff"}
    return Message(
        "fit",
        task_id="task-1",
        run_id="run-1",
        round=2,
        node_id=9,
        is_reply=True,
        arrays=Arrays(arrays),
        config=config,
        metrics={"acc": float("nan")},
        num_examples=128,
        loss=0.25,
        error="none",
    )


# --- strategies -------------------------------------------------------------------------------

dtypes = st.sampled_from(DTYPES).flatmap(
    lambda name: st.sampled_from([np.dtype(name), np.dtype(name).newbyteorder(">")])
)
layouts = st.sampled_from([lambda a: a, lambda a: a.T, lambda a: a[::-1] if a.ndim else a])
shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)
arrays = st.builds(
    lambda a, layout: layout(a), dtypes.flatmap(lambda d: hnp.arrays(d, shapes)), layouts
)
scalars = st.one_of(
    st.booleans(), st.integers(), st.floats(), st.text(max_size=8), st.binary(max_size=8)
)
# names (keys, task and run ids) hold no control characters (pollinate.text.name_problem)
names = st.text(max_size=6).filter(lambda name: name_problem(name) is None)
scalar_dicts = st.dictionaries(names, scalars, max_size=4)
ids = st.integers(0, 2**63 - 1)
messages = st.builds(
    Message,
    kind=st.sampled_from(MESSAGE_KINDS),
    task_id=names,
    run_id=names,
    round=ids,
    node_id=ids,
    is_reply=st.booleans(),
    arrays=st.dictionaries(st.text(max_size=6), arrays, max_size=4).map(Arrays),
    config=scalar_dicts,
    metrics=scalar_dicts,
    num_examples=ids,
    loss=st.none() | st.floats(),
    error=st.none() | st.text(max_size=8),
)
chunk_sizes = st.lists(st.integers(1, 100), min_size=1, max_size=8)


# --- round trips ------------------------------------------------------------------------------


@FAST
@given(messages)
def test_decode_inverts_encode(message: Message) -> None:
    assert fingerprint(decode(encode(message))) == fingerprint(message)


@FAST
@given(messages, chunk_sizes)
def test_decoder_inverts_encode_in_chunks_of_any_size(message: Message, sizes: list[int]) -> None:
    assert fingerprint(feed_in_chunks(encode(message), sizes)) == fingerprint(message)


@FAST
@given(messages, st.integers(1, 200))
def test_iter_encode_gives_the_bytes_of_encode_in_bounded_pieces(
    message: Message, size: int
) -> None:
    pieces = list(iter_encode(message, chunk_size=size))
    assert all(0 < len(piece) <= size for piece in pieces)
    assert b"".join(pieces) == encode(message)


def test_every_scalar_type_round_trips_exactly() -> None:
    values = {
        "yes": True,
        "zero": 0,
        "big": -(2**100),
        "one": 1.0,
        "nan": float("nan"),
        "minus_zero": -0.0,
        "inf": float("-inf"),
        "tiny": 5e-324,
        "empty": "",
        "text": "grüße 🐝",
        "bytes": b"\x00\xffPLN",
        "no_bytes": b"",
    }
    message = Message("evaluate", config=values, metrics=values, loss=float("nan"))
    assert fingerprint(decode(encode(message))) == fingerprint(message)


def test_numpy_scalars_in_config_travel_as_python_scalars() -> None:
    message = Message("fit", config={"lr": np.float32(0.5), "n": np.int64(3), "b": np.bool_(1)})
    assert decode(encode(message)).config == {"lr": 0.5, "n": 3, "b": True}


def test_arrays_arrive_little_endian_contiguous_with_their_values() -> None:
    original = np.arange(12, dtype=">i4").reshape(3, 4).T[::-1]
    decoded = decode(encode(Message("fit", arrays=Arrays({"w": original})))).arrays["w"]
    assert decoded.dtype == np.dtype("<i4")
    assert decoded.flags.c_contiguous
    assert decoded.shape == (4, 3)
    np.testing.assert_array_equal(decoded, original)


def test_zero_d_and_zero_size_arrays_round_trip() -> None:
    arrays = {"scalar": np.array(2.5), "empty": np.zeros((0,), "u1"), "wide": np.ones((3, 0, 2))}
    message = Message("get_arrays", arrays=Arrays(arrays))
    assert fingerprint(decode(encode(message))) == fingerprint(message)
    assert fingerprint(feed_in_chunks(encode(message), [1])) == fingerprint(message)


# --- zero copy ---------------------------------------------------------------------------------


def test_decode_returns_read_only_views_into_its_input() -> None:
    data = encode(Message("fit", arrays=Arrays({"w": np.ones(1000, np.float32)})))
    array = decode(data).arrays["w"]
    assert np.shares_memory(array, np.frombuffer(data, np.uint8))
    assert not array.flags.writeable


def test_iter_encode_streams_array_data_without_copying_it() -> None:
    weights = np.random.default_rng(0).random(250_000).astype(np.float32)  # 1 MB
    pieces = list(iter_encode(Message("fit", arrays=Arrays({"w": weights})), chunk_size=1 << 16))
    views = [piece for piece in pieces if isinstance(piece, memoryview)]
    assert sum(map(len, views)) == weights.nbytes
    assert all(np.shares_memory(np.frombuffer(view, np.uint8), weights) for view in views)


# --- the format, byte by byte ----------------------------------------------------------------


def test_the_layout_is_as_documented() -> None:
    w = np.arange(6, dtype=">f8").reshape(2, 3)
    mask = np.array([True, False])
    data = encode(
        Message("fit", round=4, arrays=Arrays({"w": w, "mask": mask}), config={"k": b"hi"})
    )
    assert data[:4] == MAGIC == b"PLN\x01"
    (length,) = struct.unpack("<I", data[4:8])
    raw = data[8 : 8 + length]
    parsed = json.loads(raw)
    assert parsed["arrays"] == [
        {"name": "w", "dtype": "float64", "shape": [2, 3]},
        {"name": "mask", "dtype": "bool", "shape": [2]},
    ]
    assert parsed["config"] == {"k": ["bytes", "aGk="]}
    assert (parsed["kind"], parsed["round"], parsed["loss"]) == ("fit", 4, None)
    assert data == frame(raw, w.astype("<f8").tobytes(), mask.tobytes())


def test_a_message_laid_out_by_hand_decodes() -> None:
    message = decode(frame(header(), W))
    assert (message.kind, message.task_id, message.round, message.node_id) == ("fit", "t1", 3, 7)
    assert message.config == {"lr": 0.1}
    np.testing.assert_array_equal(message.arrays["fc1.weight"], np.arange(40).reshape(10, 4))


# --- rejection: the invariant ----------------------------------------------------------------


def test_every_truncation_is_rejected() -> None:
    data = encode(rich_message())
    for end in range(len(data)):
        with pytest.raises(WireError):
            decode(data[:end])
        with pytest.raises(WireError):
            feed_in_chunks(data[:end], [5])


def test_a_truncated_array_is_named_in_the_error() -> None:
    text = assert_rejected(frame(header(), W[:96]), "truncated")
    assert text == (
        "array 'fc1.weight' declares shape (10, 4) of float32 = 160 bytes but only 96 bytes"
        " remain: the message is truncated"
    )


mutations = st.lists(
    st.tuples(
        st.sampled_from(["flip", "set", "insert", "delete"]), st.floats(0, 1), st.integers(0, 255)
    ),
    min_size=1,
    max_size=4,
)


def mutate(data: bytes, edits: list[tuple[str, float, int]]) -> bytes:
    out = bytearray(data)
    for op, where, byte in edits:
        at = min(int(where * len(out)), len(out) - 1)
        if op == "flip":
            out[at] ^= 1 << (byte % 8)
        elif op == "set":
            out[at] = byte
        elif op == "insert":
            out.insert(at, byte)
        else:
            del out[at]
    return bytes(out)


@THOROUGH
@given(mutations, chunk_sizes)
def test_decode_never_raises_anything_but_wire_error(edits: Any, sizes: list[int]) -> None:
    data = mutate(encode(rich_message()), edits)
    try:
        message = decode(data)
    except WireError:
        with pytest.raises(WireError):
            feed_in_chunks(data, sizes)
        return
    # What decodes is a valid Message: the Decoder agrees, and it travels again unchanged.
    assert fingerprint(feed_in_chunks(data, sizes)) == fingerprint(message)
    assert fingerprint(decode(encode(message))) == fingerprint(message)


@FAST
@given(st.binary(max_size=300))
def test_random_bytes_are_rejected(data: bytes) -> None:
    with pytest.raises(WireError):
        decode(data)
    with pytest.raises(WireError):
        feed_in_chunks(data, [3])


@FAST
@given(st.binary(max_size=300))
def test_random_bytes_after_the_magic_are_rejected(data: bytes) -> None:
    with pytest.raises(WireError):
        decode(MAGIC + data)


PICKLES = {
    "protocol 0, os.system": b"cos\nsystem\n(S'echo pwned'\ntR.",
    "protocol 2, posix.system": (
        b"\x80\x02cposix\nsystem\nq\x00X\x06\x00\x00\x00whoamiq\x01\x85q\x02Rq\x03."
    ),
    "protocol 5, dict": b"\x80\x05\x95\x0b\x00\x00\x00\x00\x00\x00\x00}\x94\x8c\x01a\x94K\x01s.",
    "numpy .npy file": b"\x93NUMPY\x01\x00v\x00{'descr': '|O', 'fortran_order': False}",
}


@pytest.mark.parametrize("payload", PICKLES.values(), ids=PICKLES.keys())
def test_pickle_looking_payloads_are_rejected(payload: bytes) -> None:
    assert_rejected(payload, "not a pollinate message")
    assert_rejected(frame(payload), "not UTF-8 JSON")


def padded_case() -> bytes:
    data = bytearray(frame(header(task_id="t"), W))
    header_end = 8 + struct.unpack("<I", data[4:8])[0]
    assert header_end % 64, "the hand-made header must leave padding before the array"
    data[header_end] = 1
    return bytes(data)


NESTED = "[" * 100_000 + "]" * 100_000
REJECTED = {
    "empty input": (b"", "truncated"),
    "shorter than the prefix": (b"PLN\x01\x05", "truncated"),
    "bad magic": (b"\x89PNG\r\n\x1a\n" + bytes(64), "not a pollinate message"),
    "newer format version": (b"PLN\x02" + bytes(64), "version 2 is not supported"),
    "header length beyond buffer": (
        MAGIC + struct.pack("<I", 1000) + b"{}",
        "1000 bytes.*truncated",
    ),
    "header length over the limit": (MAGIC + struct.pack("<I", 2**32 - 1), "max_header_bytes"),
    "header not JSON": (frame(b"{kind: fit}"), "not UTF-8 JSON"),
    "header not UTF-8": (frame(b'{"kind": "\xff"}'), "not UTF-8 JSON"),
    "empty header": (frame(b""), "not UTF-8 JSON"),
    "header JSON is a list": (frame([header()]), "must be a JSON object, got a JSON list"),
    "header JSON is a number": (frame(b"1e999"), "must be a JSON object, got a JSON float"),
    "deeply nested JSON": (frame(NESTED), "not UTF-8 JSON"),
    "deeply nested JSON inside a field": (frame('{"config": ' + NESTED + "}"), "not UTF-8 JSON"),
    "int with too many digits": (frame('{"round": ' + "9" * 5000 + "}"), "not UTF-8 JSON"),
    "repeated JSON key": (frame('{"kind": "fit", "kind": "evaluate"}'), "repeats the key 'kind'"),
    "missing key": (frame({k: v for k, v in header().items() if k != "loss"}), r"lacks.*'loss'"),
    "unknown key": (frame(header(extra=1), W), "unknown keys {'extra'}"),
    "dtype object '|O'": (frame(header(arrays=[entry(dtype="|O")])), "dtype '|O'"),
    "dtype object": (frame(header(arrays=[entry(dtype="object")])), "dtype 'object'"),
    "dtype unicode": (frame(header(arrays=[entry(dtype="<U3")])), "dtype '<U3'"),
    "dtype structured": (frame(header(arrays=[entry(dtype="V8")])), "dtype 'V8'"),
    "dtype datetime": (frame(header(arrays=[entry(dtype="datetime64[s]")])), "dtype"),
    "dtype float128": (frame(header(arrays=[entry(dtype="float128")])), "dtype 'float128'"),
    "dtype as a list": (frame(header(arrays=[entry(dtype=["<f4"])])), "dtype"),
    "shape with negative dim": (
        frame(header(arrays=[entry(shape=[-1, 4])])),
        "not a list of ints >= 0",
    ),
    "shape with float dim": (
        frame(header(arrays=[entry(shape=[10.0, 4])])),
        "not a list of ints >= 0",
    ),
    "shape with bool dim": (
        frame(header(arrays=[entry(shape=[True, 4])])),
        "not a list of ints >= 0",
    ),
    "shape not a list": (frame(header(arrays=[entry(shape="10")])), "shape '10'"),
    "shape dim over int64": (frame(header(arrays=[entry(shape=[2**64])])), "max_total_array_bytes"),
    "shape product overflows int64": (
        frame(header(arrays=[entry(shape=[2**32] * 3)])),
        "max_total_array_bytes",
    ),
    "zero-size shape with huge dims": (
        frame(header(arrays=[entry(shape=[0, 2**62, 2**62])])),
        "max_total_array_bytes",
    ),
    "declared 10**18 bytes": (
        frame(header(arrays=[entry(dtype="uint8", shape=[10**18])])),
        "limit",
    ),
    "shape with 33 dims": (frame(header(arrays=[entry(shape=[1] * 33)])), "max_ndim"),
    "duplicate array names": (
        frame(header(arrays=[entry(shape=[1]), entry(shape=[1])]), b"abcd", b"abcd"),
        "'fc1.weight' appears twice",
    ),
    "array entry not an object": (frame(header(arrays=[["w", "float32", [1]]])), "name, dtype"),
    "array entry with extra key": (frame(header(arrays=[{**entry(), "offset": 0}])), "name, dtype"),
    "arrays not a list": (frame(header(arrays={})), "'arrays' must be a JSON list"),
    "array name not a str": (frame(header(arrays=[entry(name=1)])), "name is not valid text"),
    "array name a lone surrogate": (frame(header(arrays=[entry(name="\ud800")])), "not valid text"),
    "nonzero padding": (padded_case(), "padding before array 'fc1.weight'"),
    "trailing bytes": (frame(header(), W) + b"\x00", "unexpected bytes after the end"),
    "trailing bytes, no arrays": (frame(header(arrays=[])) + b"x", "unexpected bytes"),
    "truncated padding": (frame(header(), W)[:-161], "truncated"),
    "bool bytes other than 0 and 1": (
        frame(header(arrays=[entry("mask", "bool", [3])]), b"\x00\x01\x02"),
        "other than 0 and 1",
    ),
    "config not an object": (frame(header(config=[])), "'config' must be a JSON object"),
    "config value not a pair": (frame(header(config={"lr": 0.1})), r"\[tag, value\] pair"),
    "config pair too long": (frame(header(config={"lr": ["float", 0.1, 1]})), "pair"),
    "config unknown tag": (frame(header(config={"lr": ["double", 0.1]})), "tag 'double'"),
    "config tag not a str": (frame(header(config={"lr": [["float"], 0.1]})), "has tag"),
    "config float as str": (frame(header(config={"lr": ["float", "0.1"]})), "tagged 'float'"),
    "config int as bool": (frame(header(config={"n": ["int", True]})), "tagged 'int'"),
    "config int as float": (frame(header(config={"n": ["int", 1.0]})), "tagged 'int'"),
    "config bool as int": (frame(header(config={"b": ["bool", 1]})), "tagged 'bool'"),
    "config bytes not base64": (frame(header(config={"k": ["bytes", "a!b="]})), "not base64"),
    "config bytes not a str": (
        frame(header(config={"k": ["bytes", [104, 105]]})),
        "tagged 'bytes'",
    ),
    "config key a lone surrogate": (frame(header(config={"\udc00": ["int", 1]})), "Unicode"),
    "metrics str a lone surrogate": (frame(header(metrics={"m": ["str", "\ud83d"]})), "tagged"),
    "metrics key too long": (frame(header(metrics={"m" * 257: ["int", 1]})), "MAX_NAME"),
    "config key a newline": (frame(header(config={"lr\n": ["int", 1]})), "control character"),
}


@pytest.mark.parametrize(("data", "match"), REJECTED.values(), ids=REJECTED.keys())
def test_malformed_input_is_rejected(data: bytes, match: str) -> None:
    assert_rejected(data, match)


BAD_FIELDS = [
    ("kind", "train", "must be one of fit, evaluate, get_arrays, secagg"),
    ("kind", 1, "must be str, got int"),
    ("task_id", None, "must be str, got NoneType"),
    ("run_id", ["r"], "must be str, got list"),
    ("round", -1, r"must be in 0..2\*\*63-1"),
    ("round", 2**63, r"must be in 0..2\*\*63-1"),
    ("round", True, "must be int, got bool"),
    ("round", 1.0, "must be int, got float"),
    ("node_id", "7", "must be int, got str"),
    ("num_examples", -5, r"must be in 0..2\*\*63-1"),
    ("is_reply", 0, "must be bool, got int"),
    ("loss", "0.5", "must be float or null, got str"),
    ("loss", 1, "must be float or null, got int"),
    ("error", 5, "must be str or null, got int"),
    ("error", "\udfff", "is not valid Unicode"),
    ("task_id", "t" * 257, "is 257 characters long, over the limit of 256"),
    ("run_id", "r\nforged", r"holds the control character \\n"),
]


@pytest.mark.parametrize(("field", "value", "match"), BAD_FIELDS)
def test_header_fields_have_exact_types(field: str, value: Any, match: str) -> None:
    assert_rejected(frame(header(**{field: value}), W), f"header field '{field}' {match}")


# --- limits -----------------------------------------------------------------------------------


def test_limits_are_enforced_and_inclusive() -> None:
    data = frame(header(), W)
    assert_rejected(data, "Limits.max_header_bytes", Limits(max_header_bytes=100))
    assert_rejected(data, "Limits.max_total_array_bytes", Limits(max_total_array_bytes=159))
    assert_rejected(data, "Limits.max_ndim", Limits(max_ndim=1))
    assert_rejected(data, "Limits.max_arrays", Limits(max_arrays=0))
    at_the_limit = Limits(max_total_array_bytes=160, max_ndim=2, max_arrays=1)
    assert decode(data, at_the_limit).arrays.nbytes == 160
    assert feed_in_chunks(data, [50], at_the_limit).arrays.nbytes == 160


def test_the_total_of_all_arrays_is_limited() -> None:
    two = frame(header(arrays=[entry("a", shape=[16]), entry("b", shape=[16])]), W[:64], W[:64])
    text = assert_rejected(two, "in total", Limits(max_total_array_bytes=100))
    assert "array 'b'" in text


def test_limits_must_be_non_negative_ints() -> None:
    with pytest.raises(ValueError, match="max_arrays"):
        Limits(max_arrays=-1)
    with pytest.raises(ValueError, match="max_ndim"):
        Limits(max_ndim=2.5)


# --- the streaming Decoder ----------------------------------------------------------------------


def test_decoder_rejects_bad_magic_at_the_first_byte() -> None:
    with pytest.raises(WireError, match="not a pollinate message"):
        Decoder().feed(b"G")
    decoder = Decoder()
    decoder.feed(b"PLN")
    with pytest.raises(WireError, match="version 2"):
        decoder.feed(b"\x02")


def test_decoder_rejects_an_oversized_header_from_the_prefix_alone() -> None:
    with pytest.raises(WireError, match="max_header_bytes"):
        Decoder().feed(MAGIC + struct.pack("<I", 2**31))


def test_decoder_checks_limits_as_soon_as_the_header_arrives() -> None:
    data = frame(header(arrays=[entry(dtype="uint8", shape=[10**6])]), bytes(10**6))
    header_end = 8 + struct.unpack("<I", data[4:8])[0]
    decoder = Decoder(Limits(max_total_array_bytes=1000))
    decoder.feed(data[: header_end - 1])
    with pytest.raises(WireError, match="max_total_array_bytes"):
        decoder.feed(data[header_end - 1 : header_end])


def test_decoder_refuses_further_use_once_it_has_rejected_its_input() -> None:
    decoder = Decoder()
    with pytest.raises(WireError):
        decoder.feed(b"garbage!")
    with pytest.raises(WireError, match="already rejected"):
        decoder.feed(encode(Message("fit")))
    with pytest.raises(WireError, match="already rejected"):
        decoder.finish()


def test_decoder_takes_bytes_bytearray_and_memoryview_chunks() -> None:
    data = encode(rich_message())
    decoder = Decoder()
    decoder.feed(data[:100])
    decoder.feed(bytearray(data[100:200]))
    decoder.feed(memoryview(data)[200:])
    assert fingerprint(decoder.finish()) == fingerprint(rich_message())


def test_decoder_arrays_are_its_own_writable_copies() -> None:
    data = bytearray(encode(Message("fit", arrays=Arrays({"w": np.zeros(4)}))))
    decoder = Decoder()
    decoder.feed(data)
    array = decoder.finish().arrays["w"]
    data[-1] = 0x7F
    assert array.flags.writeable and not array.any()


def test_decoder_tells_the_array_bytes_its_header_declares_once_the_header_is_in() -> None:
    message = Message("fit", arrays=Arrays({"w": np.zeros(5, np.float32), "b": np.zeros(3)}))
    head, *rest = iter_encode(message)
    decoder = Decoder()
    decoder.feed(head[:-1])
    assert decoder.array_bytes is None
    decoder.feed(head[-1:])
    assert decoder.array_bytes == 5 * 4 + 3 * 8
    for piece in rest:
        decoder.feed(piece)
    assert decoder.finish().arrays["w"].shape == (5,)


# --- errors that teach, and stay short ----------------------------------------------------------


def test_error_messages_never_dump_the_input() -> None:
    huge = "x" * 500_000
    cases = [
        b"\x00" * 10_000_000,
        frame(header(arrays=[entry(name=huge, dtype="object")])),
        frame(header(arrays=[entry(shape=[10**4000])])),
        frame(header(**{huge: 1})),
        frame(header(config={huge: ["float", huge]})),
        frame(header(task_id=[huge])),
        frame(header(round=[[[[[[[[[[huge]]]]]]]]]])),
    ]
    for data in cases:
        with pytest.raises(WireError) as caught:
            decode(data)
        assert len(str(caught.value)) < 400, str(caught.value)[:1000]


def test_text_from_a_peer_decodes_bounded_and_as_one_line() -> None:
    error = "x" * 800_000 + "\n2026-12-06 INFO forged line"
    data = frame(header(error=error, metrics={"note": ["str", "y\n" * 50_000]}), W)
    for message in (decode(data), feed_in_chunks(data, [4096])):
        assert message.error == "x" * MAX_TEXT + f"… [{len(error)} chars]"
        assert message.metrics["note"] == "y\n" * (MAX_TEXT // 2) + "… [100000 chars]"
        # the error is shown as it came, but on one line: its control characters escaped
        escaped = decode(frame(header(error="a\r\nb\x1b[2J\u2028c"), W)).error
        assert escaped == "a\\r\\nb\\x1b[2J\\u2028c"


# --- encoding refuses what cannot travel ------------------------------------------------------


@pytest.mark.parametrize(
    "array",
    [
        np.array([None, 1], dtype=object),
        np.array(["a", "bc"]),
        np.array([b"a"]),
        np.array(["2024-01-01"], dtype="datetime64[D]"),
        np.zeros(2, dtype=[("x", "f4"), ("y", "i4")]),
        np.zeros(2, dtype=np.longdouble)
        if np.dtype(np.longdouble).itemsize > 8
        else np.zeros(2, "V3"),
    ],
    ids=["object", "unicode", "bytes", "datetime", "structured", "longdouble"],
)
def test_dtypes_that_cannot_travel_are_refused_when_the_message_is_made(
    array: np.ndarray,
) -> None:
    with pytest.raises(TypeError, match="cannot travel"):
        Message("fit", arrays={"x": array})


def test_metadata_that_cannot_travel_is_refused_when_the_message_is_made() -> None:
    with pytest.raises(ValueError, match="Message.round"):
        Message("fit", round=-1)
    with pytest.raises(TypeError, match="Message.node_id"):
        Message("fit", node_id=True)
    with pytest.raises(TypeError, match="config entry 'w'"):
        Message("fit", config={"w": [1, 2]})
    with pytest.raises(ValueError, match="chunk_size"):
        iter_encode(Message("fit"), chunk_size=0)


def test_wire_never_unpickles_or_evaluates() -> None:
    paths = sorted(Path(wire.__file__).parent.glob("*.py"))  # the package and all its parts
    assert len(paths) > 1
    nodes = [node for path in paths for node in ast.walk(ast.parse(path.read_text()))]
    imported = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert imported.isdisjoint({"pickle", "marshal", "shelve", "dill", "cloudpickle", "joblib"})
    called = {
        node.func.id if isinstance(node.func, ast.Name) else node.func.attr
        for node in nodes
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name | ast.Attribute)
    }
    assert called.isdisjoint({"eval", "exec", "compile", "__import__", "load", "loads_pickle"})
