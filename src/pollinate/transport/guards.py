"""What keeps one peer from starving the others: call limits, a byte budget, idle cuts.

The hub's servers run on one asyncio event loop (``ports.py``), so a call that waits (a
long-poll, a log follower, an upload that stalls) costs a coroutine, not a thread. These guards
bound what each peer may hold:

- ``CallLimits``: at most ``per_peer`` open calls per peer (a node id, or a source address);
  more are refused at once with RESOURCE_EXHAUSTED;
- ``ByteBudget``: the arrays being decoded at once fit a budget, so memory does not grow with
  the number of uploads;
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
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
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


class ByteBudget:
    """Admits holders while the bytes they hold fit in ``limit``; a holder larger than the
    limit is admitted alone, and one of no bytes at once. Used from the event loop only."""

    def __init__(self, limit: int) -> None:
        self._limit, self._held = limit, 0
        self._changed = asyncio.Condition()

    @asynccontextmanager
    async def hold(self, nbytes: int) -> AsyncIterator[None]:
        async with self._changed:
            await self._changed.wait_for(lambda: self._fits(nbytes))
            self._held += nbytes
        try:
            yield
        finally:
            async with self._changed:
                self._held -= nbytes
                self._changed.notify_all()

    def _fits(self, nbytes: int) -> bool:
        return nbytes == 0 or self._held == 0 or self._held + nbytes <= self._limit


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
