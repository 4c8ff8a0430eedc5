"""A reply written into its journal file as it arrives is committed only if it is exactly one
valid message of its declared size (``hub/reply_file.py``); anything else leaves no file."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest

from pollinate import wire
from pollinate.errors import StorageError, WireError
from pollinate.hub.atomic_file import AtomicFile
from pollinate.hub.reply_file import ReplyFile
from pollinate.records import Arrays, Message


def reply() -> Message:
    arrays = Arrays({"b": np.arange(3, dtype=np.int8), "w": np.linspace(0, 1, 1000)})
    return Message("fit", task_id="t1", run_id="r", round=1, is_reply=True, arrays=arrays)


def reply_file(path: Path, size: int, failures: list[StorageError] | None = None) -> ReplyFile:
    def make() -> AtomicFile:
        return AtomicFile(path, lambda exc: StorageError(f"the disk said {exc.strerror}"))

    return ReplyFile(make, size, (failures if failures is not None else []).append)


def files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_reply_written_in_pieces_is_committed_under_its_name_and_read_from_its_file(
    tmp_path: Path,
) -> None:
    data = wire.encode(reply())
    file = reply_file(tmp_path / "reply.pln", len(data))
    for start in range(0, len(data), 1000):
        file.write(data[start : start + 1000])
    assert files(tmp_path) != ["reply.pln"]  # a partial file until it is finished
    got = file.finish()
    assert files(tmp_path) == ["reply.pln"]
    assert (tmp_path / "reply.pln").read_bytes() == data
    np.testing.assert_array_equal(got.arrays["w"], reply().arrays["w"])
    assert got.task_id == "t1" and not got.arrays["w"].flags.writeable  # a view of the file


def test_bytes_past_the_declared_size_are_refused_before_they_are_written(
    tmp_path: Path,
) -> None:
    data = wire.encode(reply())
    file = reply_file(tmp_path / "reply.pln", len(data))
    with pytest.raises(WireError, match="5 unexpected bytes after the end of the message"):
        file.write(data + b"extra")
    file.discard()
    assert files(tmp_path) == []


@pytest.mark.parametrize(
    "damage",
    ["truncated", "padding", "bool"],
)
def test_a_reply_that_is_not_one_valid_message_leaves_no_file(tmp_path: Path, damage: str) -> None:
    message = reply()
    data = bytearray(wire.encode(message))
    head = len(wire.encode_parts(message)[0])
    if damage == "truncated":
        data = data[:-1]
    elif damage == "padding":  # the bytes between the header and the first array
        data[head] = 0xFF
        assert head % 8  # there is padding to damage
    else:  # the bool-typed int8 array is not 0/1: made a bool array by the header
        data = bytearray(bytes(data).replace(b'"dtype":"int8"', b'"dtype":"bool"'))
        data[data.index(bytes([0, 1, 2]))] = 7
    file = reply_file(tmp_path / "reply.pln", len(wire.encode(message)))
    file.write(bytes(data))
    with pytest.raises(WireError):
        file.finish()
    assert files(tmp_path) == []


def test_a_disk_that_refuses_a_write_is_told_and_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = wire.encode(reply())
    failures: list[StorageError] = []
    file = reply_file(tmp_path / "reply.pln", len(data), failures)
    file.write(data[:10])

    def full(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", full)  # the disk fills up mid-upload
    with pytest.raises(StorageError, match="the disk said No space left on device"):
        file.write(data[10:])
    monkeypatch.undo()
    assert len(failures) == 1
    file.discard()
    assert files(tmp_path) == []
