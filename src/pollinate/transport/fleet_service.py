"""The fleet API: nodes (mutual TLS) and newcomers (a join or login token), on asyncio.

Invariants:
- a node's identity is the one its certificate names (mutual TLS), checked by the hub on
  every call (``callers.py``: a revoked node is refused at once), never what it says;
- a call whose request does not arrive within ``guards.REQUEST_SECONDS`` is cut (every method
  is served as client-streaming and reads its one request itself: ``guards.one_request``, or
  ``FleetService._node_request`` for heartbeats and long-polls);
- a source address holds at most ``NEWCOMER_CALLS_PER_SOURCE`` open newcomer calls (``Enrol``,
  ``Login``, ``Diagnose``: anyone may make them, so they count before their request arrives);
- a node holds at most ``CALLS_PER_NODE`` open calls; a long-poll waits on the event loop,
  not in a thread, so idle calls starve nothing;
- a reply is checked from its header (its task's owner, run, round and size, ``Hub.check_reply``)
  before any array byte is accepted, and an upload that stalls is cut (``guards.next_within``);
- a node sends its reply's header alone, and its arrays only once the hub answers
  ``send_arrays``: at most ``guards.UPLOADS_AT_ONCE`` uploads arrive at once (or more while
  they declare under ``guards.FLOOR_BYTES`` together), one per node (``TransferBudget``), so
  the hub's memory for replies is a few uploads' chunks in flight whatever the number of
  nodes; a node that sends before it is told is held back by the HTTP/2 window
  (``transport.UPLOAD_WINDOW``); an admitted upload that is too slow is cut
  (``guards.transfer_seconds``);
- likewise a task's arrays go out to at most ``guards.DOWNLOADS_AT_ONCE`` nodes at once (the
  others have its first chunk and wait); a download whose node takes no chunk for
  ``guards.IDLE_SECONDS``, or that takes over ``guards.transfer_seconds``, is cut, and its
  place and the model it held go with its call;
- a reply's header must come whole within ``guards.transfer_seconds`` of its size limit, in
  chunks that are not empty (what the hub keeps meanwhile is the header and a chunk);
- a reply's bytes go straight into its journal file as they arrive, never into arrays at the
  hub; the file is decoded whole (every check of the wire format) before it is recorded
  (``hub/reply_file.py``); every step that touches the file runs in the hub's pool and ends
  even if the node hangs up meanwhile: the reply is then recorded, or its file is gone;
- garbage is one log line and an error status, never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import grpc

import pollinate.wire as wire
from pollinate.errors import PollinateError, StorageError, WireError
from pollinate.hub.fleet import PollEnded, Refused, TryLater
from pollinate.hub.hub import Hub, TooManyAttempts
from pollinate.hub.rate_limit import source_of
from pollinate.hub.reply_file import ReplyFile
from pollinate.placement import MAX_LABELS, label_problem
from pollinate.records import Message, MessageKind
from pollinate.security.certificates import load_certificate, user_name_in
from pollinate.text import MAX_TEXT, inert, name_problem
from pollinate.transport import (
    CHUNK_BYTES,
    FLEET_SERVICE,
    NODE_ID_HEADER,
    chunk_data,
    data_chunk,
    guards,
)
from pollinate.transport import fleet_pb2 as pb
from pollinate.transport.callers import Callers
from pollinate.transport.guards import (
    BadRequest,
    CallLimits,
    Idle,
    TransferBudget,
    admitted,
    next_within,
    off_loop,
    one_request,
    parse,
    status_for,
    transfer_seconds,
)
from pollinate.wire.format import PREFIX_BYTES

log = logging.getLogger("pollinate.transport")

T = TypeVar("T")

MAX_PULL_WAIT = 60.0
"""The longest a long-poll waits for a task. Nodes ask for 50 s (``node.agent.PULL_WAIT``):
each poll is a call, and an idle fleet of 10,000 nodes polling every 20 s made 500 calls a
second (benchmarks/README.md, Fleet). A queued task wakes a waiting poll at once."""
ABANDONED_LOG_SECONDS = 60.0
"""Node calls whose client went away before its request came are logged as one line with
their count at most this often (``Abandoned``), not one line each."""
CALLS_PER_NODE = 8
"""A node needs three at once (heartbeat, long-poll, upload); a restarting one a few more."""
NEWCOMER_CALLS_PER_SOURCE = 32
"""An enrolment is one short call per node, so a site enrolling its nodes at once behind one
address needs a few; a stranger's idle calls are then bounded per address, not per connection."""


class Wakeups:
    """Wakes a node's long-polls on the event loop when the fleet says a task may be there;
    the fleet calls ``wake`` from any thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._events: dict[int, asyncio.Event] = {}
        self._listeners: Counter[int] = Counter()

    def wake(self, node_id: int | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is waiting
            self._loop.call_soon_threadsafe(self._set, node_id)

    def _set(self, node_id: int | None) -> None:
        events = self._events.values() if node_id is None else [self._events.get(node_id)]
        for event in list(events):
            if event is not None:
                event.set()

    @contextlib.contextmanager
    def listening(self, node_id: int) -> Iterator[asyncio.Event]:
        event = self._events.setdefault(node_id, asyncio.Event())
        self._listeners[node_id] += 1
        try:
            yield event
        finally:
            self._listeners[node_id] -= 1
            if not self._listeners[node_id]:
                del self._listeners[node_id], self._events[node_id]


class Abandoned:
    """Counts node calls that ended without a request: their node stopped waiting (a
    heartbeat's 10 s deadline passed before the hub read it, the node stopped), so no one
    hears an error. One log line per ``ABANDONED_LOG_SECONDS`` says how many: an overloaded
    hub with 10,000 nodes logged 7,000-11,000 lines of them in a minute, one per call,
    which only added to its load. Used from the event loop only."""

    def __init__(self, every: float = ABANDONED_LOG_SECONDS) -> None:
        self.every, self.count, self.total = every, 0, 0
        self._since: float | None = None

    def note(self, what: str) -> None:
        now = time.monotonic()
        self.count, self.total = self.count + 1, self.total + 1
        if self._since is None:
            self._since = now
        if now - self._since >= self.every or self.total == 1:  # the first one at once
            log.warning(
                "%d node call(s) (the latest a %s) ended without a request in the last %.0fs: "
                "their nodes stopped waiting; many mean the hub answers too slowly",
                self.count,
                what,
                now - self._since,
            )
            self.count, self._since = 0, now


class FleetService:
    """The fleet API: enrolment, login and diagnosis for newcomers; heartbeats, renewal,
    long-polls for tasks and replies for nodes."""

    UNARY: dict[str, Any] = {
        "Enrol": pb.EnrolReply,
        "Login": pb.LoginReply,
        "Diagnose": pb.DiagnoseReply,
        "Renew": pb.EnrolReply,
        "Heartbeat": pb.HeartbeatReply,
    }
    """The unary methods, with their reply types. Each is served as client-streaming, so it
    can cut a call whose request never comes (``one_request``)."""

    def __init__(
        self,
        hub: Hub,
        pool: ThreadPoolExecutor,
        callers: Callers,
        wakeups: Wakeups,
        *,
        heartbeats: ThreadPoolExecutor | None = None,
    ) -> None:
        self.hub, self._pool, self.callers, self.wakeups = hub, pool, callers, wakeups
        # heartbeats never queue behind replies (an fsync each) or enrolments
        self._heartbeats = heartbeats or pool
        self.secure = callers.secure
        self.calls = CallLimits(CALLS_PER_NODE)
        self.newcomers = CallLimits(NEWCOMER_CALLS_PER_SOURCE)
        self.abandoned = Abandoned()
        self.limits = wire.DEFAULT_LIMITS  # what a reply's header may declare
        self.uploads = TransferBudget(guards.UPLOADS_AT_ONCE)
        self.downloads = TransferBudget(guards.DOWNLOADS_AT_ONCE)
        hub.fleet.watch(wakeups.wake)

    def handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        """Requests arrive as bytes and are parsed here, so garbage is one log line.
        PullTask's chunks leave as the bytes it writes, already serialized (``data_chunk``:
        protobuf's serializer is slow)."""
        unary = {
            name: grpc.stream_unary_rpc_method_handler(
                getattr(self, name), response_serializer=reply.SerializeToString
            )
            for name, reply in self.UNARY.items()
        }
        return {
            **unary,
            "PullTask": grpc.stream_stream_rpc_method_handler(self.PullTask),
            "PushReply": grpc.stream_stream_rpc_method_handler(
                self.PushReply, response_serializer=pb.PushReplyAck.SerializeToString
            ),
        }

    async def _off_loop(self, call: Callable[..., T], *args: Any) -> T:
        return await off_loop(self._pool, call, *args)

    # --- newcomers --------------------------------------------------------------------------

    async def Diagnose(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> Any:
        async with admitted(self.newcomers, source_of(context.peer()), context):
            request = await one_request(requests, pb.DiagnoseRequest, "Diagnose", context)
            reason = await self._off_loop(self.hub.diagnose, request.certificate_pem)
        return pb.DiagnoseReply(accepted=reason is None, reason=reason or "")

    async def Enrol(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> Any:
        async with admitted(self.newcomers, source_of(context.peer()), context):
            request = await one_request(requests, pb.EnrolRequest, "Enrol", context)
            cert, ca_pem, node_id = await self._redeem(
                context, self.hub.enrol, request.token, request.csr_pem, context.peer()
            )
        return pb.EnrolReply(certificate_pem=cert, ca_pem=ca_pem, node_id=node_id)

    async def Login(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> Any:
        async with admitted(self.newcomers, source_of(context.peer()), context):
            request = await one_request(requests, pb.EnrolRequest, "Login", context)
            cert, ca_pem = await self._redeem(
                context, self.hub.redeem_user_token, request.token, request.csr_pem, context.peer()
            )
        return pb.LoginReply(
            certificate_pem=cert, ca_pem=ca_pem, name=user_name_in(load_certificate(cert))
        )

    async def _redeem(
        self, context: grpc.aio.ServicerContext, redeem: Callable[..., T], *args: Any
    ) -> T:
        try:
            return await self._off_loop(redeem, *args)
        except TooManyAttempts as exc:  # the hub logged it, with the source, capped
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        except PollinateError as exc:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        raise AssertionError("unreachable")  # abort raises

    # --- nodes ------------------------------------------------------------------------------

    async def Heartbeat(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> Any:
        request = await self._node_request(pb.HeartbeatRequest, "Heartbeat", context)
        if problem := _heartbeat_problem(request):
            log.warning("refused a heartbeat from %s: %s", inert(context.peer(), 80), problem)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        if self.secure or not request.name:
            node_id = await self._identify(context)
        else:
            try:
                node_id = await self._off_loop(self.hub.node_id_for_name, request.name)
            except StorageError as exc:  # a new name needs a row: the node tries again later
                await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        beat = (
            node_id,
            request.app_hash,
            dict(request.node_config),
            request.session,
            dict(request.labels),
            dict(request.resources),
        )
        if not self.hub.heartbeat_in_memory(*beat):  # an arrival, or a new report: hub.db
            async with admitted(self.calls, f"node {node_id}", context):
                await off_loop(self._heartbeats, self.hub.heartbeat, *beat)
        interval = self.hub.fleet.interval(self.hub.heartbeat_interval)
        return pb.HeartbeatReply(node_id=node_id, interval_seconds=interval)

    async def Renew(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> Any:
        request = await one_request(requests, pb.RenewRequest, "Renew", context)
        node_id = await self._identify(context)
        async with admitted(self.calls, f"node {node_id}", context):
            try:
                cert = await self._off_loop(self.hub.renew, node_id, request.csr_pem)
            except PollinateError as exc:
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        return pb.EnrolReply(certificate_pem=cert, node_id=node_id)

    async def PullTask(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> None:
        """The task as serialized TaskChunks: app hash and run config first, then, once the
        download has a place in its budget, the message's bytes."""
        request = await self._node_request(pb.PullTaskRequest, "PullTask", context)
        node_id = await self._identify(context)
        async with admitted(self.calls, f"node {node_id}", context):
            task = await self._next_task(
                node_id, min(max(request.wait_seconds, 0.0), MAX_PULL_WAIT)
            )
            if task is None:
                return
            config = wire.encode(Message(MessageKind.GET_ARRAYS, config=task.run_config))
            first = pb.TaskChunk(app_hash=task.app_hash, run_config=config).SerializeToString()
            if not await _sent(context, first, node_id):
                return
            lease = await self.downloads.admit(f"node {node_id}", task.message.arrays.nbytes)
            try:
                await _send_within(task.message, node_id, context)
            finally:
                lease.release()

    async def _next_task(self, node_id: int, wait: float) -> Any:
        """The node's next task, waiting up to ``wait`` seconds on the event loop (a timer,
        no task of its own) for the fleet to wake it."""
        deadline = asyncio.get_running_loop().time() + wait
        with self.wakeups.listening(node_id) as woken:
            ticket = self.hub.open_poll(node_id)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    while True:
                        woken.clear()
                        try:
                            task = self.hub.fleet.take(node_id, ticket)
                        except PollEnded:
                            return None
                        if task is not None:
                            return task
                        await woken.wait()
            return None

    async def _node_request(self, kind: Any, what: str, context: grpc.aio.ServicerContext) -> Any:
        """A node call's one request, held to ``guards.one_request``'s rules (it and its end
        within ``REQUEST_SECONDS``, garbage or two requests refused, one log line each) but
        read without a task per call, for the calls every node makes all the time; a call
        its client abandoned before sending its request is counted (``Abandoned``)."""
        try:
            async with asyncio.timeout(guards.REQUEST_SECONDS):
                raw = await context.read()
                if raw is grpc.aio.EOF:
                    self.abandoned.note(what)
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{what}: no request")
                if await context.read() is not grpc.aio.EOF:
                    refusal: PollinateError = BadRequest(
                        f"{what} from {inert(context.peer(), 80)} sent more than one request"
                    )
                else:
                    return parse(kind, raw, what, inert(context.peer(), 80))
        except TimeoutError:
            refusal = Idle(
                f"{what} from {inert(context.peer(), 80)} sent no request within "
                f"{guards.REQUEST_SECONDS:g}s: the call was cut"
            )
        except BadRequest as exc:
            refusal = exc
        log.warning("%s", refusal)
        await context.abort(status_for(refusal), str(refusal))
        raise AssertionError("unreachable")  # abort raises

    async def PushReply(
        self, chunks: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> None:
        """A reply: its header, checked; ``send_arrays`` once it has a place in the upload
        budget; its bytes into its journal file; then the answer: accepted or not."""
        node_id = await self._identify(context)
        async with admitted(self.calls, f"node {node_id}", context):
            try:
                await self._receive(node_id, chunks, context)
            except (WireError, Refused) as exc:
                log.warning("refused a reply from node %d: %s", node_id, exc)
                await context.write(pb.PushReplyAck(accepted=False, reason=str(exc)))
                return
            except (TryLater, StorageError) as exc:
                log.warning("a reply from node %d must wait: %s", node_id, exc)
                await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
            except (Idle, BadRequest) as exc:
                log.warning("cut a reply from node %d: %s", node_id, exc)
                await context.abort(status_for(exc), str(exc))
        await context.write(pb.PushReplyAck(accepted=True))

    async def _receive(
        self, node_id: int, stream: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> None:
        """Take a reply: its header first, checked against its task before any array byte is
        taken; then, once it has a place in the upload budget (the node waits until told),
        its bytes straight into its journal file; then hand it to the hub."""
        chunks, peer = aiter(stream), f"node {node_id}"
        head, declared, size, received = await _read_head(chunks, peer, self.limits)
        await self._off_loop(self.hub.check_reply, node_id, head, declared)
        if problem := self.hub.journal.refusing():
            raise StorageError(problem)
        lease = await self.uploads.admit(peer, declared)
        file = self.hub.journal.reply_file(head, size)  # made on disk by its first write
        try:
            if declared:  # it may have waited: is its task still open?
                await self._off_loop(self.hub.check_reply, node_id, head, declared)
                await context.write(_SEND_ARRAYS)
            await self._write_within(chunks, file, received, peer, transfer_seconds(declared))
        except BaseException:
            self._pool.submit(file.discard)  # in its turn, after any write under way
            raise
        finally:
            lease.release()  # its bytes are on their way to the disk: the memory is free
        # one job, which runs to its end even if the node hangs up meanwhile: the reply is
        # then recorded (a push again is accepted), or its file is gone
        await self._off_loop(self._record, node_id, file)

    def _record(self, node_id: int, file: ReplyFile) -> None:
        """Check the whole reply in its file, then record and route it (``accept_file``)."""
        self.hub.accept_file(node_id, file.finish(), file.path)

    async def _write_within(
        self,
        chunks: AsyncIterator[bytes],
        file: ReplyFile,
        first: bytes | bytearray,
        peer: str,
        seconds: float,
    ) -> None:
        """Write ``first`` and the rest of the upload into ``file``, each chunk in the hub's
        pool while the next arrives; Idle if it takes over ``seconds``. Returns (or raises)
        only once no write is under way."""
        writing = self._pool.submit(file.write, first)
        try:
            async with asyncio.timeout(seconds):
                while (raw := await next_within(chunks)) is not None:
                    data = _data(raw, peer)
                    await asyncio.wrap_future(writing)
                    writing = self._pool.submit(file.write, data)
                await asyncio.wrap_future(writing)
        except TimeoutError:
            raise Idle(
                f"{peer}'s upload took over {seconds:g}s: it was cut, so that it does not keep "
                "its place in the hub's upload budget from other nodes' replies"
            ) from None
        finally:
            if not writing.done():  # the upload ended early: let the write end first
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.wrap_future(writing)

    async def _identify(self, context: grpc.aio.ServicerContext) -> int:
        if self.secure:
            return await self.callers.node(context)
        for key, value in context.invocation_metadata() or ():
            if key == NODE_ID_HEADER and str(value).isdigit():
                return int(value)
        await context.abort(
            grpc.StatusCode.UNAUTHENTICATED,
            "no node identity: send a Heartbeat with a name first (insecure mode)",
        )
        raise AssertionError("unreachable")  # abort raises


async def _read_head(
    chunks: AsyncIterator[bytes], peer: str, limits: wire.Limits
) -> tuple[Message, int, int, bytearray]:
    """A reply's header (checked, as the wire format checks it against ``limits``), the
    array bytes and the whole bytes it declares, and the bytes read so far: the header's and
    any that came with it. No array is allocated (``Decoder.feed_head``); the header must
    come within ``guards.transfer_seconds`` of its size limit, in chunks that are not empty,
    so what is kept meanwhile is at most the limit and a chunk."""
    decoder, received = wire.Decoder(limits), bytearray()
    seconds = transfer_seconds(PREFIX_BYTES + limits.max_header_bytes)
    try:
        async with asyncio.timeout(seconds):
            while (head := decoder.head) is None:
                raw = await next_within(chunks)
                if raw is None:
                    raise WireError("the reply ended before its header")
                data = _data(raw, peer)
                if not data:
                    raise WireError("an empty chunk before the reply's header was whole")
                received += data
                decoder.feed_head(data)
    except TimeoutError:
        raise Idle(f"{peer}'s reply header took over {seconds:g}s: the upload was cut") from None
    return head, decoder.array_bytes or 0, decoder.size or 0, received


_SEND_ARRAYS = pb.PushReplyAck(send_arrays=True)


async def _send_within(message: Message, node_id: int, context: grpc.aio.ServicerContext) -> None:
    """The task's bytes, each chunk taken by the node within ``IDLE_SECONDS`` and all
    within ``transfer_seconds``; else the call ends with DEADLINE_EXCEEDED (the status
    set, not ``abort``: with a write cut short, gRPC could send it only once the node
    read again) and its place and its model go."""
    limit = transfer_seconds(message.arrays.nbytes)
    loop = asyncio.get_running_loop()
    end = loop.time() + limit
    try:
        for piece in wire.iter_encode(message, CHUNK_BYTES):
            async with asyncio.timeout_at(min(end, loop.time() + guards.IDLE_SECONDS)):
                if not await _sent(context, data_chunk(piece), node_id):
                    return
    except TimeoutError:
        slow = Idle(
            f"node {node_id}'s download of its task stalled for {guards.IDLE_SECONDS:g}s "
            f"or took over {limit:g}s: it was cut, so that it does not keep its place "
            "from other nodes (it pulls again)"
        )
        log.warning("%s", slow)
        context.set_code(status_for(slow))
        context.set_details(str(slow))


async def _sent(context: grpc.aio.ServicerContext, message: bytes, node_id: int) -> bool:
    """Write ``message``; False if the call takes no more: gRPC fails the write once the
    node has hung up (and could send no status either: the call just ends)."""
    try:
        await context.write(message)
    except grpc.aio.InternalError as exc:
        log.info("node %d's task could not be sent (it hung up): %s", node_id, exc)
        return False
    return True


def _data(raw: bytes, peer: str) -> bytes | memoryview:
    """A reply chunk's data: a view of ``raw`` in the layout nodes send (``chunk_data``),
    else parsed by protobuf (a copy; garbage is BadRequest)."""
    view = chunk_data(raw)
    return parse(pb.Chunk, raw, "a reply chunk", peer).data if view is None else view


def _heartbeat_problem(request: Any) -> str | None:
    """What is wrong with a heartbeat's fields, all of which the hub stores: names, keys and
    the app hash must be names (``text.name_problem``), values short; at most ``MAX_LABELS``
    labels and as many resources, each a name a selector can spell (``label_problem``)."""
    fields = [("name", request.name), ("session", request.session), ("app hash", request.app_hash)]
    for what, name in fields:
        if name and (problem := name_problem(name)):
            return f"the node's {what} {problem}"
    for key, value in request.node_config.items():
        if problem := name_problem(key):
            return f"a node config key {problem}"
        if len(value) > MAX_TEXT:
            return f"node config {key!r} is {len(value)} characters long, over {MAX_TEXT}"
    for what, pairs in (("labels", request.labels), ("resources", request.resources)):
        if len(pairs) > MAX_LABELS:
            return f"the node sent {len(pairs)} {what}, over the limit of {MAX_LABELS}"
        for key, value in pairs.items():
            if problem := label_problem(key, value):
                return f"a node's {what[:-1]} {problem}"
    return None


def fleet_handler(service: FleetService) -> grpc.GenericRpcHandler:
    """The service's methods under the Fleet service's names."""
    return grpc.method_handlers_generic_handler(FLEET_SERVICE, service.handlers())
