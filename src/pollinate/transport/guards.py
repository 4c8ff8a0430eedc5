"""What keeps one peer from starving the others: call limits, a byte budget, idle cuts.

The hub's servers run on one asyncio event loop (``ports.py``), so a call that waits (a
long-poll, a log follower, an upload that stalls) costs a coroutine, not a thread. These guards
bound what each peer may hold:

- ``CallLimits``: at most ``per_peer`` open calls per peer (a node id, or a source address);
  more are refused at once with RESOURCE_EXHAUSTED;
- ``UploadBudget``: the hub takes in a few uploads at once (``UPLOADS_AT_ONCE``, or any number
  under ``FLOOR_BYTES``) while the other nodes wait with their header sent, so its memory
  does not grow with the number of nodes; a node holds one place at a time, and an admitted
  upload must finish within ``upload_seconds`` or is cut;
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
"""Uploads of replies the hub takes in at once, however large (``UploadBudget``). Each holds
at most its HTTP/2 window and a chunk or two in the hub (its bytes go to its file as they
come), so this bounds the hub's memory for replies; a few at once keep the link busy while
one waits for the disk, more add memory, not speed (they cross one event loop)."""
FLOOR_BYTES = 64 << 20
"""Uploads declaring this many array bytes together are admitted whatever their number, so
small models are not taken in one after another."""
UPLOAD_BYTES_PER_SECOND = 256 << 10
"""The slowest an admitted upload may be on average (2 Mbit/s), past ``IDLE_SECONDS``."""

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
    """An upload's place in an ``UploadBudget``, held from its admission until ``release``."""

    def __init__(self, budget: UploadBudget, peer: str, nbytes: int) -> None:
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


class TooLarge(PollinateError):
    """A reply declares more array bytes than the hub could ever hold for it."""


class UploadBudget:
    """Admits uploads of replies, in the order they ask, while at most ``uploads`` of them
    arrive at once (whatever their size) or while those arriving declare at most ``floor``
    bytes of arrays together; a peer holds one place at a time, and a reply of no arrays
    needs none.

    A place is held from admission until its ``Lease`` is released, once the upload's bytes
    are all in its file (``hub/reply_file.py``). A node not admitted yet waits with only its
    header sent (it sends its arrays when told: ``PushReply``), so the hub's memory for
    replies is ``uploads`` times what one upload holds in flight, whatever the number of
    nodes. A reply declaring more than ``largest`` bytes is refused (``TooLarge``), never
    left to wait.

    The waiting is on the event loop; ``Lease.release`` may come from any thread. The high
    water marks (``peak_uploads``, ``peak_bytes``) say what was admitted at once.
    """

    def __init__(
        self, uploads: int = UPLOADS_AT_ONCE, floor: int = FLOOR_BYTES, largest: int = 8 << 30
    ) -> None:
        if uploads < 1:
            raise ValueError(f"uploads must be at least 1, got {uploads!r}")
        self.uploads, self.floor, self.largest = uploads, floor, largest
        self.held_uploads = self.held_bytes = self.peak_uploads = self.peak_bytes = 0
        self._peers: set[str] = set()
        self._waiting: deque[_Ticket] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def waiting(self) -> int:
        """Uploads waiting for a place now."""
        return len(self._waiting)

    async def admit(self, peer: str, nbytes: int) -> Lease:
        """Wait for a place for the upload of ``peer``'s reply of ``nbytes`` array bytes."""
        if nbytes > self.largest:
            raise TooLarge(
                f"{peer}'s reply declares {nbytes} bytes of arrays, more than the {self.largest} "
                "the hub holds for one reply: it was refused before any array byte was read"
            )
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
        return self.held_uploads < self.uploads or self.held_bytes + nbytes <= self.floor

    def _admit_waiting(self) -> None:
        """Admit waiting replies in order; one that does not fit stops the rest (first come,
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
            self.held_uploads += 1
            self.held_bytes += lease.nbytes
            self.peak_uploads = max(self.peak_uploads, self.held_uploads)
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
        self.held_uploads -= 1
        self.held_bytes -= lease.nbytes
        self._admit_waiting()


@dataclass(frozen=True)
class _Ticket:
    lease: Lease
    admitted: asyncio.Future[None]


def upload_seconds(nbytes: int) -> float:
    """How long an admitted upload of ``nbytes`` may take: ``IDLE_SECONDS``, plus its bytes at
    ``UPLOAD_BYTES_PER_SECOND``. A peer slower than that would keep its place from the
    others, so it is cut (and may push again)."""
    return IDLE_SECONDS + nbytes / UPLOAD_BYTES_PER_SECOND


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
