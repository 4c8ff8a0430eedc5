"""Errors raised by pollinate.

Every error a user can cause says what happened, why it matters and what to do. The
hierarchy::

    PollinateError                 base of everything pollinate raises on purpose
    ├── WireError (ValueError)     bytes that do not decode to a valid Message
    ├── AppError                   an app or its config cannot be loaded or is inconsistent
    ├── ClientError                a client raised, or replied with something unusable
    ├── RunError                   a run cannot go on (too few clients, too many failures)
    └── StorageError               the hub cannot write its data dir (full, read-only)

Misuse of the Python API (wrong types, impossible arguments) raises plain ``TypeError`` or
``ValueError`` with the bad value shown and a ``Hint:`` line.
"""

from __future__ import annotations


class PollinateError(Exception):
    """Base class of every error pollinate raises on purpose."""


class WireError(PollinateError, ValueError):
    """Bytes that are not a valid encoded Message (malformed, truncated or over a limit)."""


class AppError(PollinateError):
    """An app cannot be loaded: missing file, bad ``[tool.pollinate]`` table, unknown key."""


class ClientError(PollinateError):
    """A client failed: it raised, or its reply does not fit the global model."""


class RunError(PollinateError):
    """A run cannot go on: too few clients available, or a round lost too many replies."""


class StorageError(PollinateError):
    """The hub cannot write to its data dir (disk full, read-only, gone).

    What is already recorded stays intact; the hub takes no new work until writes succeed
    again, and runs go on from their last recorded round.
    """
