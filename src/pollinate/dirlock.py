"""One process per data directory: a lock the kernel drops when its holder dies.

Two hubs on one data dir would run the same rounds and write the same files; two nodes on
one would share one identity and take turns being "restarted". ``lock_dir`` refuses the
second, naming the first.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from pollinate.errors import PollinateError


def lock_dir(directory: Path, what: str, flag: str) -> int:
    """Hold a lock on ``directory`` for the life of the process, as ``what`` (``hub``,
    ``node``) started with ``flag`` (the option naming the directory); PollinateError if
    another process holds it. The lock is on the directory itself, so a read-only one can be
    locked too; ``WHAT.lock`` inside says who holds it, when it can be written. Returns the
    descriptor that holds the lock."""
    owner = os.open(directory, os.O_RDONLY)
    note = directory / f"{what}.lock"
    try:
        fcntl.flock(owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(owner)
        try:
            holder = note.read_text()[:80].strip() or "another process"
        except OSError:
            holder = "another process"
        raise PollinateError(
            f"another {what} ({holder}) runs on the data dir {directory}.\nHint: stop it "
            f"first, or give this {what} its own {flag}."
        ) from None
    with contextlib.suppress(OSError):  # who holds it, for the message above
        note.write_text(f"pid {os.getpid()}")
    return owner
