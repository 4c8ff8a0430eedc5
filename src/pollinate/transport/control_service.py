"""The control port: users submit, list, follow and stop runs, and create join tokens.

A follower of a run's log waits on the event loop, not in a thread, so any number of
``pollinate log`` followers cost the hub little; a source address holds at most
``CALLS_PER_SOURCE`` open calls, counted from a call's start, and a call whose request does
not arrive in time is cut (every method is served as client-streaming and reads its one
request itself: ``guards.one_request``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import grpc

from pollinate.errors import PollinateError, StorageError
from pollinate.hub.hub import Hub
from pollinate.hub.inventory import NodeEntry, inventory
from pollinate.hub.rate_limit import source_of
from pollinate.hub.state import LogRow, RunRow, RunStatus
from pollinate.placement import SelectorError, parse_selector
from pollinate.text import inert
from pollinate.transport import fleet_pb2 as pb
from pollinate.transport import rounds_from_wire, rounds_to_wire
from pollinate.transport.guards import CallLimits, admitted, off_loop, one_request

log = logging.getLogger("pollinate.transport")

T = TypeVar("T")

CALLS_PER_SOURCE = 64
LOG_POLL_SECONDS = 0.25
"""How often a follower looks for new lines of a running run's log."""
CONTROL_SERVICE = "pollinate.v1.Control"
SUBMIT_SECONDS = 60.0
"""A SubmitRun request carries its app archive (up to gRPC's 4 MiB message limit), which a
slow link to the hub takes tens of seconds to send: it gets this long, not REQUEST_SECONDS."""


class ControlService:
    def __init__(self, hub: Hub, pool: ThreadPoolExecutor) -> None:
        self.hub, self._pool = hub, pool
        self.calls = CallLimits(CALLS_PER_SOURCE)

    def handler(self) -> grpc.GenericRpcHandler:
        unary: dict[str, tuple[Any, Any, float | None]] = {
            "SubmitRun": (pb.SubmitRunRequest, pb.SubmitRunReply, SUBMIT_SECONDS),
            "ListRuns": (pb.ListRunsRequest, pb.ListRunsReply, None),
            "StopRun": (pb.StopRunRequest, pb.StopRunReply, None),
            "CreateToken": (pb.CreateTokenRequest, pb.CreateTokenReply, None),
            "ListNodes": (pb.ListNodesRequest, pb.ListNodesReply, None),
        }
        handlers = {
            name: grpc.stream_unary_rpc_method_handler(
                self._guarded(name, request, seconds),
                response_serializer=reply.SerializeToString,
            )
            for name, (request, reply, seconds) in unary.items()
        }
        handlers["FollowLog"] = grpc.stream_stream_rpc_method_handler(
            self.FollowLog, response_serializer=pb.LogEntry.SerializeToString
        )
        return grpc.method_handlers_generic_handler(CONTROL_SERVICE, handlers)

    def _guarded(self, name: str, kind: Any, seconds: float | None) -> Callable[..., Any]:
        """The method ``name`` with the caller's source under its call limit and its request
        read within ``seconds`` (``guards.REQUEST_SECONDS`` if None) and parsed as ``kind``."""
        method = getattr(self, name)

        async def guarded(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> Any:
            async with admitted(self.calls, source_of(context.peer()), context):
                request = await one_request(requests, kind, name, context, seconds)
                return await method(request, context)

        return guarded

    async def SubmitRun(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            run_id = await self._off_loop(
                functools.partial(self.hub.submit_run, select=request.select),
                request.app_archive,
                request.app_hash,
                dict(request.config),
                rounds_from_wire(request.rounds),
                request.seed,
            )
        except StorageError as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except PollinateError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return pb.SubmitRunReply(run_id=run_id)

    async def ListRuns(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        rows = await self._off_loop(self.hub.list_runs)
        return pb.ListRunsReply(runs=[_run_info(row) for row in rows])

    async def StopRun(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        reason = await self._off_loop(self.hub.stop_run, inert(request.run_id, 80))
        return pb.StopRunReply(stopped=reason is None, reason=reason or "")

    async def CreateToken(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            token, expires = await self._off_loop(
                self.hub.create_token, request.ttl_seconds or 3600.0
            )
        except PollinateError as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        return pb.CreateTokenReply(token=token, expires=expires)

    async def ListNodes(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            selector = parse_selector(request.select)
        except SelectorError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        entries = await self._off_loop(inventory, self.hub, selector)
        return pb.ListNodesReply(nodes=[_node_info(entry) for entry in entries])

    async def FollowLog(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        async with admitted(self.calls, source_of(context.peer()), context):
            request = await one_request(requests, pb.FollowLogRequest, "FollowLog", context)
            if await self._off_loop(self.hub.run_info, request.run_id) is None:
                await context.abort(
                    grpc.StatusCode.NOT_FOUND,
                    f"no run {inert(request.run_id, 80)!r}; `pollinate ls` lists the runs",
                )
            after = request.after
            while True:
                rows = await self._off_loop(self.hub.wait_log, request.run_id, after, 0.0)
                for row in rows:
                    after = row.seq
                    yield _entry(row)
                if rows:
                    continue
                info = await self._off_loop(self.hub.run_info, request.run_id)
                if not request.follow or (
                    info is not None and info.status is not RunStatus.RUNNING
                ):
                    for row in await self._off_loop(self.hub.wait_log, request.run_id, after, 0.0):
                        yield _entry(row)
                    return
                await asyncio.sleep(LOG_POLL_SECONDS)

    async def _off_loop(self, call: Callable[..., T], *args: Any) -> T:
        return await off_loop(self._pool, call, *args)


def _entry(row: LogRow) -> Any:
    return pb.LogEntry(seq=row.seq, time=row.time, kind=row.kind, text=row.text)


def _run_info(row: RunRow) -> Any:
    return pb.RunInfo(
        run_id=row.run_id,
        app=row.app,
        status=row.status,
        round=row.round,
        rounds=rounds_to_wire(row.rounds),
        created=row.created,
        detail=row.detail,
    )


def _node_info(entry: NodeEntry) -> Any:
    age = -1.0 if entry.heartbeat_age is None else entry.heartbeat_age
    return pb.NodeInfo(
        node_id=entry.node_id,
        name=entry.name,
        projects=list(entry.projects),
        labels=entry.labels,
        resources=entry.resources,
        state=entry.state.value,
        heartbeat_age=age,
        runs=list(entry.runs),
    )
