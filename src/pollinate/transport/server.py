"""The hub's gRPC servers: the fleet API for nodes and the control API for users.

This package is the only place that imports ``grpc``; it turns RPCs into calls on a ``Hub``
and back. Messages travel as wire chunks of at most ``CHUNK_BYTES``, so no transfer needs a
whole-message gRPC limit and memory per transfer stays about one copy of the arrays.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import grpc

from pollinate import wire
from pollinate.errors import PollinateError, StorageError, WireError
from pollinate.hub.fleet import Refused, TryLater
from pollinate.hub.hub import Hub
from pollinate.hub.state import RunRow
from pollinate.records import Message
from pollinate.security import node_id_from_certificate
from pollinate.transport import (
    CHUNK_BYTES,
    FLEET_SERVER_OPTIONS,
    FLEET_SERVICE,
    NODE_ID_HEADER,
    data_chunk,
)
from pollinate.transport import fleet_pb2 as pb
from pollinate.transport import fleet_pb2_grpc as rpc

log = logging.getLogger("pollinate.transport")

MAX_PULL_WAIT = 30.0
DECODING_BYTES = 1 << 30
"""Replies are decoded concurrently while the arrays they declare fit in this many bytes."""


@dataclass
class HubServers:
    """The running gRPC servers and the ports they bound (enrol_port 0 when insecure)."""

    servers: list[grpc.Server]
    fleet_port: int
    control_port: int
    enrol_port: int = 0

    def stop(self, grace: float = 1.0) -> None:
        for server in self.servers:
            server.stop(grace).wait()


def serve(
    hub: Hub,
    fleet_address: str,
    control_address: str,
    enrol_address: str | None = None,
    *,
    max_nodes: int = 256,
) -> HubServers:
    """Start the fleet, control and (with TLS) enrolment servers.

    With ``hub.credentials`` the fleet port speaks mutual TLS (a node's id is the one its
    certificate names) and the enrolment port server-side TLS with the pinned identity;
    without them (``--insecure``) the fleet port is plain text and there is no enrolment.
    """
    tls = hub.credentials
    fleet = grpc.server(
        ThreadPoolExecutor(max_nodes, thread_name_prefix="fleet"), options=FLEET_SERVER_OPTIONS
    )
    _add_fleet_servicer(_FleetService(hub, tls is not None), fleet)
    control = grpc.server(ThreadPoolExecutor(16, thread_name_prefix="control"))
    rpc.add_ControlServicer_to_server(_ControlService(hub), control)
    servers = HubServers([fleet, control], 0, control.add_insecure_port(control_address))
    if tls is None:
        servers.fleet_port = fleet.add_insecure_port(fleet_address)
    else:
        mutual = grpc.ssl_server_credentials(
            [(tls.server_key, tls.server_cert)], tls.ca.ca_pem, require_client_auth=True
        )
        servers.fleet_port = fleet.add_secure_port(fleet_address, mutual)
        enrol = grpc.server(ThreadPoolExecutor(8, thread_name_prefix="enrol"))
        _add_fleet_servicer(_EnrolService(hub), enrol)
        server_only = grpc.ssl_server_credentials([(tls.enrol_key, tls.enrol_cert)])
        servers.enrol_port = enrol.add_secure_port(enrol_address or "127.0.0.1:0", server_only)
        servers.servers.append(enrol)
    for server in servers.servers:
        server.start()
    return servers


def _add_fleet_servicer(servicer: rpc.FleetServicer, server: grpc.Server) -> None:
    """``rpc.add_FleetServicer_to_server``, except that PullTask's chunks leave as the bytes
    ``PullTask`` yields, already serialized (``data_chunk``: protobuf's serializer is slow)."""
    unary: dict[str, tuple[Any, Any]] = {
        "Enrol": (pb.EnrolRequest, pb.EnrolReply),
        "Diagnose": (pb.DiagnoseRequest, pb.DiagnoseReply),
        "Renew": (pb.RenewRequest, pb.EnrolReply),
        "Heartbeat": (pb.HeartbeatRequest, pb.HeartbeatReply),
    }
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, name),
            request_deserializer=request.FromString,
            response_serializer=reply.SerializeToString,
        )
        for name, (request, reply) in unary.items()
    }
    handlers["PullTask"] = grpc.unary_stream_rpc_method_handler(
        servicer.PullTask, request_deserializer=pb.PullTaskRequest.FromString
    )
    handlers["PushReply"] = grpc.stream_unary_rpc_method_handler(
        servicer.PushReply,
        request_deserializer=pb.Chunk.FromString,
        response_serializer=pb.PushReplyAck.SerializeToString,
    )
    generic = grpc.method_handlers_generic_handler(FLEET_SERVICE, handlers)
    server.add_generic_rpc_handlers((generic,))
    server.add_registered_method_handlers(FLEET_SERVICE, handlers)


class _EnrolService(rpc.FleetServicer):  # type: ignore[misc]
    """The enrolment port: only Enrol, over TLS that the join token pins."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def Enrol(self, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            cert, ca_pem, node_id = self.hub.enrol(request.token, request.csr_pem, context.peer())
        except PollinateError as exc:
            log.warning("refused an enrolment: %s", exc)
            context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        return pb.EnrolReply(certificate_pem=cert, ca_pem=ca_pem, node_id=node_id)

    def Diagnose(self, request: Any, context: grpc.ServicerContext) -> Any:
        reason = self.hub.diagnose(request.certificate_pem)
        return pb.DiagnoseReply(accepted=reason is None, reason=reason or "")


class _ByteBudget:
    """Admits holders while the bytes they hold fit in ``limit``; a holder larger than the
    limit is admitted alone, and one of no bytes at once."""

    def __init__(self, limit: int) -> None:
        self._limit, self._held = limit, 0
        self._changed = threading.Condition()

    @contextmanager
    def hold(self, nbytes: int) -> Iterator[None]:
        with self._changed:
            self._changed.wait_for(lambda: self._fits(nbytes))
            self._held += nbytes
        try:
            yield
        finally:
            with self._changed:
                self._held -= nbytes
                self._changed.notify_all()

    def _fits(self, nbytes: int) -> bool:
        return nbytes == 0 or self._held == 0 or self._held + nbytes <= self._limit


class _FleetService(rpc.FleetServicer):  # type: ignore[misc]
    """The fleet port.

    Invariant: the replies being decoded at once declare at most ``DECODING_BYTES`` of arrays
    (or are one reply, however large), so the hub's memory does not grow with the number of
    nodes: small replies decode side by side, large ones one at a time, and replies without
    arrays never wait. A waiting reply waits in gRPC flow control, so a node that sends a
    large reply slowly delays other large replies. (Decoded replies queue for the run loop,
    which folds one far faster than the next arrives.)
    """

    def __init__(self, hub: Hub, secure: bool) -> None:
        self.hub = hub
        self.secure = secure
        self._decoding = _ByteBudget(DECODING_BYTES)

    def Heartbeat(self, request: Any, context: grpc.ServicerContext) -> Any:
        if self.secure or not request.name:
            node_id = self._identify(context)
        else:
            try:
                node_id = self.hub.node_id_for_name(request.name)
            except StorageError as exc:  # a new name needs a row: the node tries again later
                context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        self.hub.heartbeat(node_id, request.app_hash, dict(request.node_config), request.session)
        return pb.HeartbeatReply(node_id=node_id, interval_seconds=self.hub.heartbeat_interval)

    def Renew(self, request: Any, context: grpc.ServicerContext) -> Any:
        node_id = self._identify(context)
        try:
            cert = self.hub.renew(node_id, request.csr_pem)
        except PollinateError as exc:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        return pb.EnrolReply(certificate_pem=cert, node_id=node_id)

    def PullTask(self, request: Any, context: grpc.ServicerContext) -> Iterator[bytes]:
        """The task as serialized TaskChunks: app hash and run config first, then data."""
        node_id = self._identify(context)
        wait = min(max(request.wait_seconds, 0.0), MAX_PULL_WAIT)
        task = self.hub.next_task(node_id, wait, active=context.is_active)
        if task is None:
            return
        config = wire.encode(Message("get_arrays", config=task.run_config))
        yield pb.TaskChunk(app_hash=task.app_hash, run_config=config).SerializeToString()
        for piece in wire.iter_encode(task.message, CHUNK_BYTES):
            yield data_chunk(piece)

    def PushReply(self, request_iterator: Iterator[Any], context: grpc.ServicerContext) -> Any:
        node_id = self._identify(context)
        decoder = wire.Decoder()
        chunks = iter(request_iterator)
        try:
            _feed_header(decoder, chunks)
            if problem := self.hub.journal.refusing():
                raise StorageError(problem)
            with self._decoding.hold(decoder.array_bytes or 0):
                for chunk in chunks:
                    decoder.feed(chunk.data)
                self.hub.accept_reply(node_id, decoder.finish())
        except (WireError, Refused) as exc:
            log.warning("refused a reply from node %d: %s", node_id, exc)
            return pb.PushReplyAck(accepted=False, reason=str(exc))
        except (TryLater, StorageError) as exc:
            log.warning("a reply from node %d must wait: %s", node_id, exc)
            context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        return pb.PushReplyAck(accepted=True)

    def _identify(self, context: grpc.ServicerContext) -> int:
        if self.secure:
            # mutual TLS verified the chain; the id is what the hub wrote into the certificate
            pems = context.auth_context().get("x509_pem_cert") or []
            try:
                return node_id_from_certificate(pems[0])
            except (IndexError, PollinateError):
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "no valid node certificate")
        for key, value in context.invocation_metadata():
            if key == NODE_ID_HEADER and str(value).isdigit():
                return int(value)
        context.abort(
            grpc.StatusCode.UNAUTHENTICATED,
            "no node identity: send a Heartbeat with a name first (insecure mode)",
        )
        raise AssertionError("unreachable")  # abort raises


def _feed_header(decoder: wire.Decoder, chunks: Iterator[Any]) -> None:
    """Feed ``chunks`` until the message's header is in (or they end)."""
    for chunk in chunks:
        decoder.feed(chunk.data)
        if decoder.array_bytes is not None:
            return


class _ControlService(rpc.ControlServicer):  # type: ignore[misc]
    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def SubmitRun(self, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            run_id = self.hub.submit_run(
                request.app_archive,
                request.app_hash,
                dict(request.config),
                request.rounds,
                request.seed,
            )
        except StorageError as exc:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except PollinateError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return pb.SubmitRunReply(run_id=run_id)

    def ListRuns(self, request: Any, context: grpc.ServicerContext) -> Any:
        return pb.ListRunsReply(runs=[_run_info(row) for row in self.hub.list_runs()])

    def FollowLog(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        if self.hub.run_info(request.run_id) is None:
            context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"no run {request.run_id!r}; `pollinate ls` lists the runs",
            )
        after = request.after
        while context.is_active():
            for row in self.hub.wait_log(request.run_id, after, wait=1.0):
                after = row.seq
                yield pb.LogEntry(seq=row.seq, time=row.time, kind=row.kind, text=row.text)
            info = self.hub.run_info(request.run_id)
            if not request.follow or (info is not None and info.status != "running"):
                rest = self.hub.wait_log(request.run_id, after, wait=0.0)
                for row in rest:
                    yield pb.LogEntry(seq=row.seq, time=row.time, kind=row.kind, text=row.text)
                return

    def StopRun(self, request: Any, context: grpc.ServicerContext) -> Any:
        reason = self.hub.stop_run(request.run_id)
        return pb.StopRunReply(stopped=reason is None, reason=reason or "")

    def CreateToken(self, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            token, expires = self.hub.create_token(request.ttl_seconds or 3600.0)
        except PollinateError as exc:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        return pb.CreateTokenReply(token=token, expires=expires)


def _run_info(row: RunRow) -> Any:
    return pb.RunInfo(
        run_id=row.run_id,
        app=row.app,
        status=row.status,
        round=row.round,
        rounds=row.rounds,
        created=row.created,
        detail=row.detail,
    )
