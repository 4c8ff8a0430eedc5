"""What keeps one peer from starving the others: call limits, a byte budget, idle cuts.

The hub's servers run on one asyncio event loop (``server.py``), so a call that waits (a
long-poll, a log follower, an upload that stalls) costs a coroutine, not a thread. These guards
bound what each peer may hold:

- ``CallLimits``: at most ``per_peer`` open calls per peer (a node id, or a source address);
  more are refused at once with RESOURCE_EXHAUSTED;
- ``ByteBudget``: the arrays being decoded at once fit a budget, so memory does not grow with
  the number of uploads;
- ``next_within``: an upload that sends nothing for ``IDLE_SECONDS`` is cut;
- ``parse``: a request that is not valid protobuf is one log line and INVALID_ARGUMENT, never a
  traceback.
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

log = logging.getLogger("pollinate.transport")

IDLE_SECONDS = 30.0
"""An upload that sends nothing for this long is cut (a 1 MiB chunk takes far less)."""

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


async def parsed(kind: Any, raw: bytes, what: str, context: grpc.aio.ServicerContext) -> Any:
    """``raw`` as ``kind``, or the call ends with INVALID_ARGUMENT and one log line."""
    try:
        return parse(kind, raw, what, context.peer())
    except BadRequest as exc:
        log.warning("%s", exc)
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))


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
