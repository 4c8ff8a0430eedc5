"""What keeps one peer from starving the others: call limits, transfer budgets, idle cuts.

The hub's servers run on one asyncio event loop (``ports.py``), so a call that waits (a
long-poll, a log follower, an upload that stalls) costs a coroutine, not a thread. These guards
bound what each peer may hold:

- ``CallLimits``: at most ``per_peer`` open calls per peer (a node id, or a source address);
  more are refused at once with RESOURCE_EXHAUSTED;
- ``TransferBudget``: the hub takes in a few uploads at once (``UPLOADS_AT_ONCE``) while the
  other nodes wait with their header sent, and sends out a few tasks' arrays at once
  (``DOWNLOADS_AT_ONCE``) while the other nodes wait with their task's first chunk (or any
  number of either under ``FLOOR_BYTES``), so its memory does not grow with the number of
  nodes; a node holds one place of each at a time, and an admitted transfer must finish
  within ``transfer_seconds``, taking no ``IDLE_SECONDS`` over a chunk, or is cut;
- ``one_request``: a call whose request does not arrive within ``REQUEST_SECONDS`` is cut;
- ``next_within``: an upload that sends nothing for ``IDLE_SECONDS`` is cut;
- ``parse``: a request that is not valid protobuf is one log line and INVALID_ARGUMENT, never a
  traceback.

Every method is served as *client-streaming* (gRPC does not send a method's cardinality over
the wire, so the nodes' and users' unary clients call them unchanged): gRPC calls a unary
handler only once the request has arrived, so a peer that sends headers and then nothing would
hold its call until its connection closed; a streaming handler runs at once and reads the one
request itself, with a deadline (``one_request``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import grpc

from pollinate.errors import PollinateError
from pollinate.text import inert

log = logging.getLogger("pollinate.transport")

IDLE_SECONDS = 30.0
"""An upload that sends nothing for this long is cut (a 1 MiB chunk takes far less)."""
REQUEST_SECONDS = 5.0
"""A call's request must arrive, and end, within this long of the call's start, or the call is
cut. Requests are small (a heartbeat, a CSR, a run id: a few KiB), so on a working link they
take milliseconds; 5 s leaves room for a couple of lost packets (TCP resends after 1 s, then
2 s), while a stranger's idle call costs the hub a coroutine for 5 s, not until it hangs up."""

UPLOADS_AT_ONCE = 4
"""Uploads of replies the hub takes in at once, however large (``TransferBudget``). Each
holds at most its HTTP/2 window and a chunk or two in the hub (its bytes go to its file as
they come), so this bounds the hub's memory for replies; a few at once keep the link busy
while one waits for the disk, more add memory, not speed (they cross one event loop)."""
DOWNLOADS_AT_ONCE = 8
"""Tasks whose arrays the hub sends at once, however large (``TransferBudget``). Each holds a
chunk or two in the hub (the model itself is shared by every task of a round), so this
bounds the hub's memory for downloads; more at once were slower, not faster (40 nodes and a
40 MB model: 5.5 s a round unbounded, 4.6 s with 8; benchmarks/README.md)."""
FLOOR_BYTES = 64 << 20
"""Transfers of this many array bytes together are admitted whatever their number, so small
models are not moved one after another."""
SLOWEST_BYTES_PER_SECOND = 256 << 10
"""The slowest an admitted transfer may be on average (2 Mbit/s), past ``IDLE_SECONDS``."""

T = TypeVar("T")


class Overloaded(PollinateError):
    """A peer holds as many open calls as it may."""


class CallLimits:
    """Counts the calls each peer has open; admits a call while the peer is under its limit."""

    def __init__(self, per_peer: int) -> None:
        self.per_peer = per_peer
        self._open: Counter[str] = Counter()

    def enter(self, peer: str) -> None:
        """Count a call of ``peer`` open; Overloaded if it already has ``per_peer``."""
        if self._open[peer] >= self.per_peer:
            raise Overloaded(
                f"{peer} already has {self.per_peer} calls open; finish one before starting another"
            )
        self._open[peer] += 1

    def leave(self, peer: str) -> None:
        self._open[peer] -= 1
        if self._open[peer] <= 0:
            del self._open[peer]


class Lease:
    """A transfer's place in a ``TransferBudget``, held from its admission until ``release``."""

    def __init__(self, budget: TransferBudget, peer: str, nbytes: int) -> None:
        self.budget, self.peer, self.nbytes = budget, peer, nbytes
        self._lock = threading.Lock()
        self._released = False

    def release(self) -> None:
        """Give the place back; from any thread, any number of times (the first counts)."""
        with self._lock:
            if self._released:
                return
            self._released = True
        self.budget._give_back(self)

    def __repr__(self) -> str:
        return f"Lease({self.peer!r}, {self.nbytes} bytes, released={self._released})"


class TransferBudget:
    """Admits transfers of arrays (uploads of replies, or downloads of tasks), in the order
    they ask, while at most ``at_once`` of them move at once (whatever their size) or while
    those moving carry at most ``floor`` bytes of arrays together; a peer holds one place at
    a time, and a transfer of no arrays needs none.

    A place is held from admission until its ``Lease`` is released, once the transfer's
    bytes are all on their way (into the reply's file, ``hub/reply_file.py``, or handed to
    gRPC). A node not admitted yet waits with only its reply's header sent (it sends its
    arrays when told: ``PushReply``) or its task's first chunk received (``PullTask``), so
    the hub's memory for transfers is ``at_once`` times what one holds in flight, whatever
    the number of nodes. (A reply declaring more than the hub would ever take in is refused
    by its header's check, before it asks for a place.)

    The waiting is on the event loop; ``Lease.release`` may come from any thread. The high
    water marks (``peak``, ``peak_bytes``) say what was admitted at once.
    """

    def __init__(self, at_once: int, floor: int = FLOOR_BYTES) -> None:
        if at_once < 1:
            raise ValueError(f"at_once must be at least 1, got {at_once!r}")
        self.at_once, self.floor = at_once, floor
        self.held = self.held_bytes = self.peak = self.peak_bytes = 0
        self._peers: set[str] = set()
        self._waiting: deque[_Ticket] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def waiting(self) -> int:
        """Transfers waiting for a place now."""
        return len(self._waiting)

    async def admit(self, peer: str, nbytes: int) -> Lease:
        """Wait for a place for a transfer of ``nbytes`` array bytes to or from ``peer``."""
        self._loop = asyncio.get_running_loop()
        lease = Lease(self, peer, nbytes)
        if nbytes == 0:
            return lease
        ticket = _Ticket(lease, self._loop.create_future())
        self._waiting.append(ticket)
        self._admit_waiting()
        try:
            await ticket.admitted
        except BaseException:  # the call ended while it waited, or as it was admitted
            if ticket in self._waiting:
                self._waiting.remove(ticket)
                self._admit_waiting()  # it may have held back others of its peer
            else:
                lease.release()
            raise
        return lease

    def _fits(self, nbytes: int) -> bool:
        return self.held < self.at_once or self.held_bytes + nbytes <= self.floor

    def _admit_waiting(self) -> None:
        """Admit waiting transfers in order; one that does not fit stops the rest (first come,
        first served), one whose peer holds a place lets the others by."""
        for ticket in list(self._waiting):
            lease = ticket.lease
            if ticket.admitted.cancelled():  # its call ended; it leaves the queue itself
                continue
            if lease.peer in self._peers:
                continue
            if not self._fits(lease.nbytes):
                return
            self._waiting.remove(ticket)
            self._peers.add(lease.peer)
            self.held += 1
            self.held_bytes += lease.nbytes
            self.peak = max(self.peak, self.held)
            self.peak_bytes = max(self.peak_bytes, self.held_bytes)
            ticket.admitted.set_result(None)

    def _give_back(self, lease: Lease) -> None:
        if lease.nbytes == 0 or self._loop is None:
            return
        try:
            on_loop = asyncio.get_running_loop() is self._loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            self._returned(lease)
            return
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits any more
            self._loop.call_soon_threadsafe(self._returned, lease)

    def _returned(self, lease: Lease) -> None:
        self._peers.discard(lease.peer)
        self.held -= 1
        self.held_bytes -= lease.nbytes
        self._admit_waiting()


@dataclass(frozen=True)
class _Ticket:
    lease: Lease
    admitted: asyncio.Future[None]


def transfer_seconds(nbytes: int) -> float:
    """How long an admitted transfer of ``nbytes`` may take: ``IDLE_SECONDS``, plus its bytes
    at ``SLOWEST_BYTES_PER_SECOND``. A peer slower than that would keep its place from the
    others, so it is cut (and may push, or pull, again)."""
    return IDLE_SECONDS + nbytes / SLOWEST_BYTES_PER_SECOND


class Idle(PollinateError):
    """A stream sent nothing for too long."""


async def next_within(stream: AsyncIterator[T], seconds: float = IDLE_SECONDS) -> T | None:
    """The stream's next item, None at its end; Idle if nothing comes within ``seconds``."""
    try:
        return await asyncio.wait_for(anext(stream), seconds)
    except StopAsyncIteration:
        return None
    except TimeoutError:
        raise Idle(f"nothing arrived for {seconds:g}s: the upload was cut") from None


async def one_request(
    requests: AsyncIterator[bytes],
    kind: Any,
    what: str,
    context: grpc.aio.ServicerContext,
    seconds: float | None = None,
) -> Any:
    """The call's one request, parsed as ``kind``. The call ends with one log line naming the
    peer: DEADLINE_EXCEEDED if the request and its end do not arrive within ``seconds``
    (``REQUEST_SECONDS`` by default), INVALID_ARGUMENT if none or two arrive or it is garbage."""
    limit = REQUEST_SECONDS if seconds is None else seconds
    peer = inert(context.peer(), 80)
    try:
        raw = await asyncio.wait_for(_sole(requests, what, peer), limit)
        return parse(kind, raw, what, peer)
    except TimeoutError:
        refusal: PollinateError = Idle(
            f"{what} from {peer} sent no request within {limit:g}s: the call was cut"
        )
    except BadRequest as exc:
        refusal = exc
    log.warning("%s", refusal)
    await context.abort(status_for(refusal), str(refusal))


async def _sole(requests: AsyncIterator[bytes], what: str, peer: str) -> bytes:
    """The stream's one message, once the stream has ended; BadRequest if none or two."""
    stream = aiter(requests)
    first = await anext(stream, None)
    if first is None:  # an empty message is b"", not None
        raise BadRequest(f"{what} from {peer} ended without a request")
    if await anext(stream, None) is not None:
        raise BadRequest(f"{what} from {peer} sent more than one request")
    return first


async def off_loop(pool: ThreadPoolExecutor, call: Callable[..., T], *args: Any) -> T:
    """Run a hub call that may block (SQLite, fsync, signing) in the hub's thread pool."""
    return await asyncio.get_running_loop().run_in_executor(pool, partial(call, *args))


@asynccontextmanager
async def admitted(
    limits: CallLimits, peer: str, context: grpc.aio.ServicerContext
) -> AsyncIterator[None]:
    """The call counted against ``peer``'s limit while it runs; RESOURCE_EXHAUSTED if over."""
    try:
        limits.enter(peer)
    except Overloaded as exc:
        log.warning("refused a call: %s", exc)
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
    try:
        yield
    finally:
        limits.leave(peer)


def parse(kind: Any, raw: bytes, what: str, peer: str) -> Any:
    """``raw`` as the protobuf message ``kind``; BadRequest if it is not one."""
    try:
        return kind.FromString(raw)
    except Exception:  # protobuf raises DecodeError and, for some garbage, other errors
        raise BadRequest(f"{what} from {peer} is not a valid {kind.__name__}") from None


class BadRequest(PollinateError):
    """A request that could not be parsed."""


def status_for(exc: PollinateError) -> grpc.StatusCode:
    """The gRPC status a guard's refusal travels as."""
    if isinstance(exc, Overloaded):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    if isinstance(exc, Idle):
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.INVALID_ARGUMENT
