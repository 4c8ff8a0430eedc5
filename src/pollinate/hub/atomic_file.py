"""A file written whole or not at all.

Its bytes go to a partial file beside the final name; ``commit`` puts them on the disk and
then gives them the name at once (a rename), so a crash, or ``discard``, leaves the old file
or none under that name, never a torn one. The name itself survives a crash of the machine
only once its folder is synced (``HubState.sync_folders``): a writer of many files syncs the
folder once.

Its calls may come from any threads (the hub writes a reply's chunks as they arrive, each
from a worker thread of the event loop, and may discard it while a write is under way): they
take turns, so a discarded file's descriptor is never closed under a write. ``OSError``
becomes ``StorageError`` through ``failure``, the data dir's own message.
"""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from pollinate.errors import StorageError

PARTIAL_SUFFIX = ".partial"


class AtomicFile:
    """``path``, written whole or not at all (see the module's docstring)."""

    def __init__(self, path: Path, failure: Callable[[OSError], StorageError]) -> None:
        self.path, self.size, self._failure = path, 0, failure
        self._turns = threading.Lock()
        token = f"{os.getpid()}.{secrets.token_hex(4)}"
        self._partial = path.with_name(f"{path.name}.{token}{PARTIAL_SUFFIX}")
        with self._storage_errors():
            path.parent.mkdir(parents=True, exist_ok=True)
            # readable too: a reply is mapped and checked before it is committed
            flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
            self._fd = os.open(self._partial, flags, 0o600)

    def fileno(self) -> int:
        """The partial file's descriptor, until ``commit`` or ``discard``."""
        return self._fd

    def write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        with self._turns:
            if self._fd < 0:  # a write that came too late to matter: not the disk's fault
                raise ValueError(f"{self.path} was discarded or committed")
            with self._storage_errors():
                self.size += len(view)
                while view:
                    view = view[os.write(self._fd, view) :]

    def commit(self) -> None:
        """Put the bytes on the disk, then under their name."""
        try:
            with self._turns, self._storage_errors():
                os.fsync(self._fd)
                self._close()
                os.replace(self._partial, self.path)
        except BaseException:
            self.discard()
            raise

    def discard(self) -> None:
        """Forget the bytes written; closing twice, or after ``commit``, is fine."""
        with self._turns:
            self._close()
        self._partial.unlink(missing_ok=True)

    def _close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    @contextmanager
    def _storage_errors(self) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            raise self._failure(exc) from exc
