"""A node's reply written into its journal file as it arrives, checked whole once it is in.

The hub does not decode a reply to keep it: its bytes go from the network straight into the
file the journal will record (``AtomicFile``), in the order they come. Once the last byte is
in, the file is mapped and decoded whole (``wire.decode``: every check of the format, no
copy), and only then put on the disk under its name. So the hub holds a reply's chunks in
flight, never its arrays; the reply it routes is a view of the file, and the run process maps
the very same file (``hub/channel.py``).

Invariant: a file that is not exactly one valid message, of the size its header declared, is
never committed (``finish`` raises WireError and the file is gone).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from pollinate.errors import StorageError, WireError
from pollinate.hub.atomic_file import AtomicFile
from pollinate.hub.sealed import map_file
from pollinate.records import Message
from pollinate.wire import decode


class ReplyFile:
    """The ``size`` bytes of one reply, written as they come; its file is made (``make``) by
    the first write, so that every step that touches the disk runs in a worker thread, and
    a caller that stops waiting (the node hung up) leaves nothing that ``discard`` misses.

    ``failed`` hears of a write the disk refused (the journal then refuses other replies
    early, before their arrays travel)."""

    def __init__(
        self, make: Callable[[], AtomicFile], size: int, failed: Callable[[StorageError], None]
    ) -> None:
        self.size, self._make, self._failed = size, make, failed
        self._file: AtomicFile | None = None
        self._lock = threading.Lock()

    @property
    def path(self) -> Path:
        """Where the reply is once ``finish`` returned."""
        return self._opened().path

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append ``data``; WireError if the reply grows past its declared size."""
        try:
            file = self._opened()
            if file.size + len(data) > self.size:
                raise WireError(
                    f"{file.size + len(data) - self.size} unexpected bytes after the end of "
                    f"the message at byte {self.size}"
                )
            file.write(data)
        except StorageError as exc:
            self._failed(exc)
            raise

    def finish(self) -> Message:
        """The reply, checked whole and on the disk under its name; WireError if it is not a
        valid message of its declared size (the file is then gone)."""
        file = self._opened()
        try:
            if file.size != self.size:
                raise WireError(
                    f"the message is truncated: {file.size} of its {self.size} bytes came"
                )
            reply = decode(map_file(file.fileno(), self.size))
            file.commit()
        except StorageError as exc:
            self._failed(exc)
            raise
        except BaseException:
            file.discard()
            raise
        return reply

    def discard(self) -> None:
        """Forget the reply: its file, if made, is gone, and a later write does nothing."""
        with self._lock:
            file, self._file = self._file, None
            self._make = _discarded
        if file is not None:
            file.discard()

    def _opened(self) -> AtomicFile:
        with self._lock:
            if self._file is None:
                self._file = self._make()
            return self._file


def _discarded() -> AtomicFile:
    raise ValueError("the reply was discarded")
