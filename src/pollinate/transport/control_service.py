"""The control API: users submit, list, follow and stop runs; admins manage tokens, users,
nodes and read the audit. Every call acts as the user its certificate names (``callers.py``);
the hub authorizes it (``hub.access``) and audits it.

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
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Any, TypeVar

import grpc

import pollinate.wire as wire
from pollinate.errors import PollinateError, StorageError
from pollinate.hub.access import DEFAULT_PROJECT, Caller, Forbidden
from pollinate.hub.hub import Hub
from pollinate.hub.inventory import NodeEntry, inventory
from pollinate.hub.journal import NoModel
from pollinate.hub.members import USER_TOKEN_SECONDS
from pollinate.hub.rate_limit import source_of
from pollinate.hub.state import LogRow, RunRow, RunStatus
from pollinate.hub.users import UserRow
from pollinate.placement import parse_selector
from pollinate.records import Message, MessageKind
from pollinate.text import MAX_NAME, inert
from pollinate.transport import (
    CHUNK_BYTES,
    CONTROL_SERVICE,
    data_chunk,
    rounds_from_wire,
    rounds_to_wire,
)
from pollinate.transport import fleet_pb2 as pb
from pollinate.transport.callers import Callers
from pollinate.transport.guards import CallLimits, admitted, off_loop, one_request

log = logging.getLogger("pollinate.transport")

T = TypeVar("T")

CALLS_PER_SOURCE = 64
LOG_POLL_SECONDS = 0.25
"""How often a follower looks for new lines of a running run's log."""
MAX_AUDIT_ROWS = 10_000
"""The most audit rows one call returns."""
SUBMIT_SECONDS = 60.0
"""A SubmitRun request carries its app archive (up to gRPC's 4 MiB message limit), which a
slow link to the hub takes tens of seconds to send: it gets this long, not REQUEST_SECONDS."""


class ControlService:
    """The control API: every method is called with the caller its certificate names
    (``callers.py``), which the hub authorizes and audits."""

    def __init__(
        self,
        hub: Hub,
        pool: ThreadPoolExecutor,
        callers: Callers,
        dashboard_link: Callable[[Caller], str] | None = None,
    ) -> None:
        self.hub, self._pool, self.callers = hub, pool, callers
        self.dashboard_link = dashboard_link
        self.calls = CallLimits(CALLS_PER_SOURCE)

    def handler(self) -> grpc.GenericRpcHandler:
        unary: dict[str, tuple[Any, Any, float | None]] = {
            "SubmitRun": (pb.SubmitRunRequest, pb.SubmitRunReply, SUBMIT_SECONDS),
            "ListRuns": (pb.ListRunsRequest, pb.ListRunsReply, None),
            "StopRun": (pb.StopRunRequest, pb.StopRunReply, None),
            "CreateToken": (pb.CreateTokenRequest, pb.CreateTokenReply, None),
            "ListNodes": (pb.ListNodesRequest, pb.ListNodesReply, None),
            "WhoAmI": (pb.WhoAmIRequest, pb.UserInfo, None),
            "DashboardLink": (pb.DashboardLinkRequest, pb.DashboardLinkReply, None),
            "RenewUser": (pb.RenewRequest, pb.LoginReply, None),
            "AddUser": (pb.AddUserRequest, pb.AddUserReply, None),
            "UserToken": (pb.UserTokenRequest, pb.AddUserReply, None),
            "ListUsers": (pb.ListUsersRequest, pb.ListUsersReply, None),
            "RevokeUser": (pb.RevokeUserRequest, pb.RevokeReply, None),
            "RevokeNode": (pb.RevokeNodeRequest, pb.RevokeReply, None),
            "LabelNode": (pb.LabelNodeRequest, pb.LabelNodeReply, None),
            "CordonNode": (pb.CordonNodeRequest, pb.CordonNodeReply, None),
            "ListAudit": (pb.ListAuditRequest, pb.ListAuditReply, None),
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
        # the model's chunks leave as the bytes PullModel yields, already serialized
        handlers["PullModel"] = grpc.stream_stream_rpc_method_handler(self.PullModel)
        return grpc.method_handlers_generic_handler(CONTROL_SERVICE, handlers)

    def _guarded(self, name: str, kind: Any, seconds: float | None) -> Callable[..., Any]:
        """The method ``name``, called with its caller, the caller's source under its call
        limit, its request read within ``seconds`` (``guards.REQUEST_SECONDS`` if None) and
        parsed as ``kind``, and the hub's refusals turned into statuses."""
        method = getattr(self, name)

        async def guarded(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> Any:
            async with admitted(self.calls, source_of(context.peer()), context):
                caller = await self.callers.user(context)
                request = await one_request(requests, kind, name, context, seconds)
                try:
                    return await method(request, caller)
                except Forbidden as exc:
                    await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
                except StorageError as exc:
                    await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
                except (PollinateError, ValueError, TypeError) as exc:  # a bad name, role...
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

        return guarded

    # --- runs -------------------------------------------------------------------------------

    async def SubmitRun(self, request: Any, caller: Caller) -> Any:
        submit = functools.partial(
            self.hub.submit_run,
            project=request.project or DEFAULT_PROJECT,
            caller=caller,
            select=request.select,
            min_nodes=request.min_nodes,
            max_nodes=request.max_nodes,
        )
        run_id = await self._off_loop(
            submit,
            request.app_archive,
            request.app_hash,
            dict(request.config),
            rounds_from_wire(request.rounds),
            request.seed,
        )
        return pb.SubmitRunReply(run_id=run_id)

    async def ListRuns(self, request: Any, caller: Caller) -> Any:
        rows = await self._off_loop(functools.partial(self.hub.list_runs, caller=caller))
        return pb.ListRunsReply(runs=[_run_info(row) for row in rows])

    async def StopRun(self, request: Any, caller: Caller) -> Any:
        stop = functools.partial(self.hub.stop_run, caller=caller)
        reason = await self._off_loop(stop, inert(request.run_id, 80))
        return pb.StopRunReply(stopped=reason is None, reason=reason or "")

    # --- the fleet --------------------------------------------------------------------------

    async def CreateToken(self, request: Any, caller: Caller) -> Any:
        create = functools.partial(
            self.hub.create_token,
            projects=list(request.projects) or [DEFAULT_PROJECT],
            uses=request.uses or 1,
            caller=caller,
        )
        token, expires = await self._off_loop(create, request.ttl_seconds or 3600.0)
        return pb.CreateTokenReply(token=token, expires=expires)

    async def ListNodes(self, request: Any, caller: Caller) -> Any:
        selector = parse_selector(request.select)  # SelectorError: INVALID_ARGUMENT
        listed = functools.partial(inventory, caller=caller)
        entries = await self._off_loop(listed, self.hub, selector)
        if request.project:
            entries = [entry for entry in entries if request.project in entry.projects]
        return pb.ListNodesReply(nodes=[_node_info(entry) for entry in entries])

    async def RevokeNode(self, request: Any, caller: Caller) -> Any:
        revoke = functools.partial(self.hub.revoke_node, caller=caller)
        await self._off_loop(revoke, request.node_id)
        return pb.RevokeReply(detail=f"node {request.node_id} revoked")

    async def LabelNode(self, request: Any, caller: Caller) -> Any:
        label = functools.partial(self.hub.label_node, caller=caller)
        labels = await self._off_loop(
            label, request.node_id, dict(request.set), list(request.remove)
        )
        return pb.LabelNodeReply(labels=labels)

    async def CordonNode(self, request: Any, caller: Caller) -> Any:
        cordon = functools.partial(self.hub.cordon_node, caller=caller)
        await self._off_loop(cordon, request.node_id, request.cordoned)
        return pb.CordonNodeReply()

    # --- users and the audit ----------------------------------------------------------------

    async def WhoAmI(self, request: Any, caller: Caller) -> Any:
        return pb.UserInfo(name=caller.name, role=caller.role, projects=sorted(caller.projects))

    async def DashboardLink(self, request: Any, caller: Caller) -> Any:
        if self.dashboard_link is None:
            raise PollinateError("this hub serves no dashboard")
        return pb.DashboardLinkReply(link=self.dashboard_link(caller))

    async def RenewUser(self, request: Any, caller: Caller) -> Any:
        certificate, ca_pem = await self._off_loop(self.hub.renew_user, caller, request.csr_pem)
        return pb.LoginReply(certificate_pem=certificate, ca_pem=ca_pem, name=caller.name)

    async def AddUser(self, request: Any, caller: Caller) -> Any:
        ttl = request.ttl_seconds or USER_TOKEN_SECONDS
        add = functools.partial(self.hub.add_user, ttl_seconds=ttl, caller=caller)
        token = await self._off_loop(add, request.name, request.role, list(request.projects))
        return pb.AddUserReply(token=token, expires=time.time() + ttl)

    async def UserToken(self, request: Any, caller: Caller) -> Any:
        ttl = request.ttl_seconds or USER_TOKEN_SECONDS
        new = functools.partial(self.hub.new_user_token, ttl_seconds=ttl, caller=caller)
        token = await self._off_loop(new, request.name)
        return pb.AddUserReply(token=token, expires=time.time() + ttl)

    async def ListUsers(self, request: Any, caller: Caller) -> Any:
        rows = await self._off_loop(functools.partial(self.hub.list_users, caller=caller))
        return pb.ListUsersReply(users=[_user_info(row) for row in rows])

    async def RevokeUser(self, request: Any, caller: Caller) -> Any:
        revoke = functools.partial(self.hub.revoke_user, caller=caller)
        await self._off_loop(revoke, request.name)
        return pb.RevokeReply(detail=f"user {inert(request.name, MAX_NAME)} revoked")

    async def ListAudit(self, request: Any, caller: Caller) -> Any:
        limit = min(max(request.limit, 0) or 100, MAX_AUDIT_ROWS)
        rows = await self._off_loop(functools.partial(self.hub.audit, limit, caller=caller))
        return pb.ListAuditReply(entries=[pb.AuditEntry(**asdict(row)) for row in rows])

    async def FollowLog(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        """The run's log from ``after``; with ``follow``, new lines as they come until the run
        ends. The caller is checked again at every poll: a revoked user's stream ends."""
        async with admitted(self.calls, source_of(context.peer()), context):
            caller = await self.callers.user(context)
            request = await one_request(requests, pb.FollowLogRequest, "FollowLog", context)
            run_id, after = inert(request.run_id, 80), request.after
            try:
                info = await self._off_loop(
                    functools.partial(self.hub.run_info, caller=caller), run_id
                )
            except Forbidden as exc:
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
            if info is None:
                await context.abort(
                    grpc.StatusCode.NOT_FOUND,
                    f"no run {run_id!r}; `pollinate ls` lists the runs",
                )
            read = functools.partial(self.hub.wait_log, caller=caller)
            while True:
                rows = await self._off_loop(read, run_id, after, 0.0)
                for row in rows:
                    after = row.seq
                    yield _entry(row)
                if rows:
                    continue
                info = await self._off_loop(self.hub.run_info, run_id)
                if not request.follow or (
                    info is not None and info.status is not RunStatus.RUNNING
                ):
                    for row in await self._off_loop(read, run_id, after, 0.0):
                        yield _entry(row)
                    return
                await asyncio.sleep(LOG_POLL_SECONDS)
                await self.callers.user(context)

    async def PullModel(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        """A run's model at a round (-1: the newest), as wire chunks of one message holding
        the arrays and, in its config, the round."""
        async with admitted(self.calls, source_of(context.peer()), context):
            caller = await self.callers.user(context)
            request = await one_request(requests, pb.PullModelRequest, "PullModel", context)
            wanted = None if request.round < 0 else request.round
            pull = functools.partial(self.hub.model, caller=caller)
            try:
                round_, arrays = await self._off_loop(pull, inert(request.run_id, 80), wanted)
            except Forbidden as exc:
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
            except NoModel as exc:
                await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
            message = Message(MessageKind.GET_ARRAYS, arrays=arrays, config={"round": round_})
            for piece in wire.iter_encode(message, CHUNK_BYTES):
                yield data_chunk(piece)

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
        project=row.project,
    )


def _user_info(row: UserRow) -> Any:
    return pb.UserInfo(
        name=row.name,
        role=row.role,
        projects=sorted(row.projects),
        created=row.created,
        created_by=row.created_by,
        revoked_at=row.revoked_at or 0.0,
        revoked_by=row.revoked_by,
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
        cert_expires=entry.cert_expires or 0.0,
    )
