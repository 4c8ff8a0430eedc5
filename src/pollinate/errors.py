"""Errors raised by pollinate.

Every error a user can cause says what happened, why it matters and what to do. Every
exception pollinate defines derives from ``PollinateError``; those defined elsewhere than
here live beside their concept, in the module named before their description. The
hierarchy (``tests/test_errors.py`` checks that it is drawn whole and true)::

    PollinateError                    base of everything pollinate raises on purpose
    ├── WireError (ValueError)        bytes that do not decode to a valid Message
    ├── AppError                      an app or its config cannot be loaded or is inconsistent
    │   └── PlacementError (ValueError)  placement: a bad node count or label
    │       └── SelectorError           placement: a placement selector that does not parse
    ├── ClientError                   a client raised, or replied with something unusable
    ├── RunError                      a run cannot go on (too few clients, too many failures)
    │   ├── TooFewClients             strategy.base: sampling found fewer clients than needed
    │   ├── TooFewReplies             strategy.base: too few usable replies to aggregate
    │   ├── UnusableUpdate            strategy.base: a strategy leaves one update out, saying why
    │   └── RunStopped                hub.grid: a user stopped the run
    ├── StorageError                  the hub cannot write its data dir (full, read-only)
    ├── SecurityError                 security.errors: a certificate, CSR, CA file or token refused
    ├── SecAggError                   secagg.messages: a secure-aggregation round cannot go on
    │   └── KeySubstituted            secagg.messages: relayed keys not signed by their owner
    ├── HubUnavailable                transport.client: the hub cannot be reached now
    ├── HubRefused                    transport.client: the hub answered, and said no
    │
    │   internal: the hub and its ports raise these to one another; a port turns them into
    │   gRPC statuses, which a node or the CLI sees as HubRefused or HubUnavailable
    ├── Forbidden                     hub.access: a caller's role or projects do not allow it
    ├── Refused                       hub.fleet: the hub refused what a node sent
    │   ├── UnknownTask               hub.fleet: a reply to a task nobody waits for
    │   ├── Duplicate                 hub.fleet: a second reply to one task
    │   └── TooManyAttempts           hub.hub: enrolment attempts over a source's rate
    ├── TryLater                      hub.fleet: the hub cannot take it now, but may soon
    ├── NoModel (LookupError)         hub.journal: no model of that run at that round
    ├── PollEnded                     hub.fleet: a node's long-poll is over
    ├── Overloaded                    transport.guards: a peer holds as many calls as it may
    ├── Idle                          transport.guards: a stream sent nothing for too long
    ├── BadRequest                    transport.guards: a request that could not be parsed
    ├── ChannelError                  hub.channel: a run's process broke the local API's format
    │   └── ChannelClosed             hub.channel: a run's process closed its end (it exited)
    ├── SealedError (ValueError)      hub.sealed: a descriptor that is no sealed memfd of its size
    └── SandboxUnavailable            hub.sandbox: no Landlock here; run code is not confined

Misuse of the Python API (wrong types, impossible arguments) raises plain ``TypeError`` or
``ValueError`` with the bad value shown and a ``Hint:`` line (``pollinate.checks``).
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
