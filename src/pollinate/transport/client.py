"""Clients of the hub's two APIs: ``FleetClient`` for nodes, ``ControlClient`` for users;
``enrol`` and ``login`` for newcomers with a token.

gRPC errors become pollinate errors here: ``HubUnavailable`` when the hub cannot be reached
(the caller retries), ``PollinateError`` with the hub's reason otherwise.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc

import pollinate.wire as wire
from pollinate.errors import PollinateError
from pollinate.hub.access import Role
from pollinate.hub.audit import AuditRow
from pollinate.hub.inventory import NodeEntry, NodeState
from pollinate.hub.state import RunStatus
from pollinate.hub.users import UserRow
from pollinate.records import Arrays, Config, Message
from pollinate.recycle import Recycler
from pollinate.security import make_key_and_csr, parse_token
from pollinate.security.credentials import NodeCredentials, UserCredentials
from pollinate.security.enrolment import fetch_pinned_certificate
from pollinate.security.guest import ENROL_SERVER_NAME, GUEST_CERT_PEM, GUEST_KEY_PEM
from pollinate.transport import (
    CHUNK_BYTES,
    CONTROL_SERVICE,
    FLEET_SERVICE,
    NODE_CHANNEL_OPTIONS,
    NODE_ID_HEADER,
    chunk_data,
    data_chunk,
    rounds_from_wire,
    rounds_to_wire,
)
from pollinate.transport import fleet_pb2 as pb
from pollinate.transport import fleet_pb2_grpc as rpc


class HubUnavailable(PollinateError):
    """The hub cannot be reached now; try again later."""


class HubRefused(PollinateError):
    """The hub answered, and said no; the message says why."""


@dataclass(frozen=True)
class PulledTask:
    message: Message
    app_hash: str
    run_config: Config


def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except grpc.RpcError as exc:
        raise _translate(exc) from None


_AWAY = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)
"""Statuses that are no answer from the hub: it is away, slow, or stopping (a hub that stops
cancels the calls it is serving; it never cancels one to say no)."""


def _translate(exc: grpc.RpcError) -> PollinateError:
    code, details = exc.code(), exc.details()
    if code in _AWAY:
        return HubUnavailable(f"hub unavailable: {details}")
    return HubRefused(details or str(code))


def enrol(address: str, token: str) -> NodeCredentials:
    """Redeem a join token at the hub: a new key, and a certificate for it.

    The token pins the hub's enrolment certificate, so the token and CSR only ever travel
    over TLS to the hub that made the token.
    """
    root = _pinned(address, token)
    key_pem, csr_pem = make_key_and_csr()
    with _as_guest(address, root) as channel:
        request = pb.EnrolRequest(token=token, csr_pem=csr_pem)
        reply = _call(rpc.FleetStub(channel).Enrol, request, timeout=30)
    return NodeCredentials(key_pem, bytes(reply.certificate_pem), bytes(reply.ca_pem), root)


def login(address: str, token: str) -> tuple[str, UserCredentials]:
    """Redeem a user's login token at the hub: (their name, a new key and its certificate)."""
    root = _pinned(address, token)
    key_pem, csr_pem = make_key_and_csr()
    with _as_guest(address, root) as channel:
        request = pb.EnrolRequest(token=token, csr_pem=csr_pem)
        reply = _call(rpc.FleetStub(channel).Login, request, timeout=30)
    credentials = UserCredentials(key_pem, bytes(reply.certificate_pem), bytes(reply.ca_pem))
    return str(reply.name), credentials


def diagnose(address: str, credentials: NodeCredentials) -> str | None:
    """Ask the hub why it refuses this node's certificate (None: it does not)."""
    if not credentials.enrol_pem:
        return None
    with _as_guest(address, credentials.enrol_pem) as channel:
        request = pb.DiagnoseRequest(certificate_pem=credentials.cert_pem)
        reply = _call(rpc.FleetStub(channel).Diagnose, request, timeout=10)
    return None if reply.accepted else str(reply.reason)


def _pinned(address: str, token: str) -> bytes:
    """The hub's enrolment certificate, checked against the token's pin."""
    pin = parse_token(token).ca_pin
    host, _, port = address.rpartition(":")
    if not port.isdigit():
        raise PollinateError(f"{address!r} is not HOST:PORT.\nHint: --hub 127.0.0.1:9092")
    return fetch_pinned_certificate(host, int(port), pin)


def _as_guest(address: str, enrolment_pem: bytes) -> grpc.Channel:
    """A channel to the hub's enrolment identity, presenting the guest certificate."""
    tls = grpc.ssl_channel_credentials(enrolment_pem, GUEST_KEY_PEM, GUEST_CERT_PEM)
    options = [("grpc.ssl_target_name_override", ENROL_SERVER_NAME)]
    return grpc.secure_channel(address, tls, options)


_DAY = 24 * 3600.0  # seconds


class FleetClient:
    """A node's connection to the hub's fleet API (mutual TLS with ``credentials``)."""

    def __init__(self, address: str, credentials: NodeCredentials | None = None) -> None:
        self.address, self._credentials = address, credentials
        self.channel = self._dial()
        self.stub = rpc.FleetStub(self.channel)
        # each task is decoded into the last one's arrays if the node let go of them
        self._recycler = Recycler()
        self._push = _pusher(self.channel)
        # a task's chunks arrive as bytes: its data is read without a copy (chunk_data)
        self._pull = self.channel.unary_stream(
            f"/{FLEET_SERVICE}/PullTask",
            request_serializer=pb.PullTaskRequest.SerializeToString,
            _registered_method=True,
        )
        self.node_id: int | None = None

    def renew(self, credentials: NodeCredentials) -> NodeCredentials:
        """New credentials (new key, new certificate) from the hub, over the current mTLS."""
        key_pem, csr_pem = make_key_and_csr()
        reply = _call(self.stub.Renew, pb.RenewRequest(csr_pem=csr_pem), timeout=30)
        return NodeCredentials(
            key_pem, bytes(reply.certificate_pem), credentials.ca_pem, credentials.enrol_pem
        )

    def heartbeat(
        self,
        app_hash: str,
        node_config: dict[str, str],
        name: str = "",
        session: str = "",
        *,
        labels: dict[str, str] | None = None,
        resources: dict[str, str] | None = None,
    ) -> float:
        """Report life, labels and resources; learn this node's id. Returns the interval for
        the next heartbeat.

        ``session`` is new with every start of the node: the hub's log shows restarts."""
        request = pb.HeartbeatRequest(
            app_hash=app_hash,
            node_config=node_config,
            name=name,
            session=session,
            labels=labels or {},
            resources=resources or {},
        )
        reply = _call(self.stub.Heartbeat, request, metadata=self._metadata(), timeout=10)
        self.node_id = int(reply.node_id)
        return float(reply.interval_seconds)

    def pull_task(self, wait: float) -> PulledTask | None:
        """The next task (waiting up to ``wait`` seconds for one), or None. Its download
        may wait its turn at the hub (``guards.DOWNLOADS_AT_ONCE``) and take long on a slow
        link: the hub bounds it (``guards.transfer_seconds``: 9 hours for the largest
        message), and keepalive pings find a hub that is gone; a day is a bound for bugs."""
        stream = self._pull(
            pb.PullTaskRequest(wait_seconds=wait), metadata=self._metadata(), timeout=wait + _DAY
        )
        try:
            return _assemble(stream, self._recycler)
        except grpc.RpcError as exc:
            raise _translate(exc) from None

    def push_reply(self, message: Message) -> None:
        """Send a reply in chunks: its header, then its arrays once the hub has a place for
        them (it says ``send_arrays``: until then a waiting node costs the hub nothing but
        the header); HubRefused with the hub's reason if it is not accepted.

        A reply with more than one chunk of arrays travels on a connection of its own,
        closed once it is through: the hub's gRPC keeps the read buffers of a connection
        that carried an upload (~1 MB of them after tens of MB) until it closes, so uploads
        on the nodes' lasting connections grew the hub's memory with the number of nodes
        (benchmarks/README.md, the tenth session)."""
        if message.arrays.nbytes <= CHUNK_BYTES:
            self._push_with(self._push, message)
            return
        channel = self._dial()
        try:
            self._push_with(_pusher(channel), message)
        finally:
            channel.close()

    def _push_with(self, push: grpc.StreamStreamMultiCallable, message: Message) -> None:
        head, body = wire.encode_parts(message, CHUNK_BYTES)
        place, ended = threading.Event(), threading.Event()

        def chunks() -> Iterator[bytes]:
            for start in range(0, len(head), CHUNK_BYTES):
                yield data_chunk(head[start : start + CHUNK_BYTES])
            if message.arrays.nbytes:
                while not place.wait(1.0):
                    if ended.is_set():
                        return
            for piece in body:
                yield data_chunk(piece)

        answers = push(chunks(), metadata=self._metadata(), timeout=3600)
        try:
            for answer in answers:
                if answer.send_arrays:
                    place.set()
                elif not answer.accepted:
                    raise HubRefused(answer.reason)
                else:
                    return
        except grpc.RpcError as exc:
            raise _translate(exc) from None
        finally:
            ended.set()
            answers.cancel()
        raise HubUnavailable("the hub ended the reply's call without an answer")

    def close(self) -> None:
        self.channel.close()

    def _dial(self) -> grpc.Channel:
        """A channel with a connection of its own (not shared with the node's others)."""
        options = [*NODE_CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]
        credentials = self._credentials
        if credentials is None:
            return grpc.insecure_channel(self.address, options)
        tls = grpc.ssl_channel_credentials(
            credentials.ca_pem, credentials.key_pem, credentials.cert_pem
        )
        return grpc.secure_channel(self.address, tls, options)

    def _metadata(self) -> list[tuple[str, str]]:
        return [] if self.node_id is None else [(NODE_ID_HEADER, str(self.node_id))]


def _pusher(channel: grpc.Channel) -> grpc.StreamStreamMultiCallable:
    """PushReply on ``channel``, its chunks serialized by ``data_chunk`` (protobuf's
    serializer is slow)."""
    return channel.stream_stream(
        f"/{FLEET_SERVICE}/PushReply",
        response_deserializer=pb.PushReplyAck.FromString,
        _registered_method=True,
    )


def _assemble(stream: Iterator[bytes], recycler: Recycler) -> PulledTask | None:
    raw = next(stream, None)
    if raw is None:
        return None
    first = _task_chunk(raw)
    run_config = wire.decode(first.run_config).config
    decoder = wire.Decoder(recycler=recycler)
    for raw in stream:
        view = chunk_data(raw)
        decoder.feed(_task_chunk(raw).data if view is None else view)
    return PulledTask(decoder.finish(), first.app_hash, run_config)


def _task_chunk(raw: bytes) -> Any:
    try:
        return pb.TaskChunk.FromString(raw)
    except Exception:  # protobuf raises DecodeError and, for some garbage, other errors
        raise HubRefused("the hub sent a task chunk that is not a valid TaskChunk") from None


@dataclass(frozen=True)
class RunSummary:
    run_id: str
    app: str
    status: RunStatus
    round: int
    rounds: int | None
    created: float
    detail: str
    project: str = ""


@dataclass(frozen=True)
class LogLine:
    seq: int
    time: float
    kind: str
    text: str


class ControlClient:
    """A user's connection to the hub's control API: TLS with their ``credentials``, or
    plain text to a hub that runs with ``--insecure`` (None)."""

    def __init__(self, address: str, credentials: UserCredentials | None = None) -> None:
        if credentials is None:
            self.channel = grpc.insecure_channel(address)
        else:
            tls = grpc.ssl_channel_credentials(
                credentials.ca_pem, credentials.key_pem, credentials.cert_pem
            )
            self.channel = grpc.secure_channel(address, tls)
        self.stub = rpc.ControlStub(self.channel)
        # the model's chunks arrive as bytes, parsed here (they may be many and large)
        self._pull = self.channel.unary_stream(
            f"/{CONTROL_SERVICE}/PullModel",
            request_serializer=pb.PullModelRequest.SerializeToString,
        )

    def submit_run(
        self,
        archive: bytes,
        app_hash: str,
        overrides: dict[str, str],
        rounds: int | None,
        seed: int,
        select: str = "",
        project: str = "",
        nodes: tuple[int, int] = (0, 0),
    ) -> str:
        """Submit a run to ``project`` (empty: the default one); ``rounds`` None runs the
        app's own number; only nodes that match the selector ``select``
        (``pollinate.placement``; empty: every node) take part, at least ``nodes[0]`` and
        at most ``nodes[1]`` of them (0: no bound)."""
        request = pb.SubmitRunRequest(
            app_archive=archive,
            app_hash=app_hash,
            config=overrides,
            rounds=rounds_to_wire(rounds),
            seed=seed,
            select=select,
            project=project,
            min_nodes=nodes[0],
            max_nodes=nodes[1],
        )
        return str(_call(self.stub.SubmitRun, request, timeout=120).run_id)

    def list_runs(self) -> list[RunSummary]:
        reply = _call(self.stub.ListRuns, pb.ListRunsRequest(), timeout=30)
        return [
            RunSummary(
                r.run_id,
                r.app,
                RunStatus(r.status),
                r.round,
                rounds_from_wire(r.rounds),
                r.created,
                r.detail,
                r.project,
            )
            for r in reply.runs
        ]

    def follow_log(self, run_id: str, follow: bool = True, after: int = 0) -> Iterator[LogLine]:
        stream = self.stub.FollowLog(pb.FollowLogRequest(run_id=run_id, follow=follow, after=after))
        try:
            for entry in stream:
                yield LogLine(entry.seq, entry.time, entry.kind, entry.text)
        except grpc.RpcError as exc:
            raise _translate(exc) from None

    def create_token(
        self, ttl_seconds: float, projects: list[str] | None = None, uses: int = 1
    ) -> tuple[str, float]:
        """A join token for ``uses`` nodes of ``projects`` (None: the default project),
        and when it expires."""
        request = pb.CreateTokenRequest(ttl_seconds=ttl_seconds, projects=projects, uses=uses)
        reply = _call(self.stub.CreateToken, request, timeout=30)
        return str(reply.token), float(reply.expires)

    def list_nodes(self, select: str = "", project: str = "") -> list[NodeEntry]:
        """The fleet as the hub knows it; only the nodes that match ``select`` and belong to
        ``project`` if given."""
        request = pb.ListNodesRequest(select=select, project=project)
        reply = _call(self.stub.ListNodes, request, timeout=30)
        return [
            NodeEntry(
                int(n.node_id),
                n.name,
                tuple(n.projects),
                NodeState(n.state),
                None if n.heartbeat_age < 0 else float(n.heartbeat_age),
                dict(n.labels),
                dict(n.resources),
                tuple(n.runs),
                n.cert_expires or None,
            )
            for n in reply.nodes
        ]

    def stop_run(self, run_id: str) -> None:
        reply = _call(self.stub.StopRun, pb.StopRunRequest(run_id=run_id), timeout=30)
        if not reply.stopped:
            raise HubRefused(reply.reason)

    def pull_model(self, run_id: str, round: int | None = None) -> tuple[int, Arrays]:
        """A run's model after ``round`` (None: the newest round that ended), and that round."""
        request = pb.PullModelRequest(run_id=run_id, round=-1 if round is None else round)
        decoder = wire.Decoder()
        try:
            for chunk in self._pull(request, timeout=600):
                decoder.feed(pb.Chunk.FromString(chunk).data)
        except grpc.RpcError as exc:
            raise _translate(exc) from None
        message = decoder.finish()
        pulled = message.config.get("round")
        if message.arrays is None or not isinstance(pulled, int):
            raise HubRefused("the hub sent no model (no arrays, or no round)")
        return pulled, message.arrays

    def revoke_node(self, node_id: int) -> None:
        _call(self.stub.RevokeNode, pb.RevokeNodeRequest(node_id=node_id), timeout=30)

    def label_node(self, node_id: int, labels: dict[str, str], remove: list[str]) -> dict[str, str]:
        """Set and remove the hub's labels of a node; its labels now."""
        request = pb.LabelNodeRequest(node_id=node_id, set=labels, remove=remove)
        return dict(_call(self.stub.LabelNode, request, timeout=30).labels)

    def cordon_node(self, node_id: int, cordoned: bool = True) -> None:
        request = pb.CordonNodeRequest(node_id=node_id, cordoned=cordoned)
        _call(self.stub.CordonNode, request, timeout=30)

    # --- users ------------------------------------------------------------------------------

    def who_am_i(self) -> UserRow:
        """The caller as the hub sees them (their ``created`` fields are not sent)."""
        return _user_row(_call(self.stub.WhoAmI, pb.WhoAmIRequest(), timeout=30))

    def dashboard_link(self) -> str:
        """A one-time link that opens the hub's dashboard as the caller."""
        return str(_call(self.stub.DashboardLink, pb.DashboardLinkRequest(), timeout=30).link)

    def renew_user(self, credentials: UserCredentials) -> UserCredentials:
        """New credentials (a new key and its certificate), over the current ones."""
        key_pem, csr_pem = make_key_and_csr()
        reply = _call(self.stub.RenewUser, pb.RenewRequest(csr_pem=csr_pem), timeout=30)
        return UserCredentials(key_pem, bytes(reply.certificate_pem), credentials.ca_pem)

    def add_user(
        self, name: str, role: str, projects: list[str], ttl_seconds: float = 0.0
    ) -> tuple[str, float]:
        """Add a user; (their one-time login token, when it expires)."""
        request = pb.AddUserRequest(
            name=name, role=role, projects=projects, ttl_seconds=ttl_seconds
        )
        reply = _call(self.stub.AddUser, request, timeout=30)
        return str(reply.token), float(reply.expires)

    def user_token(self, name: str, ttl_seconds: float = 0.0) -> tuple[str, float]:
        """Another one-time login token for an existing user."""
        request = pb.UserTokenRequest(name=name, ttl_seconds=ttl_seconds)
        reply = _call(self.stub.UserToken, request, timeout=30)
        return str(reply.token), float(reply.expires)

    def list_users(self) -> list[UserRow]:
        reply = _call(self.stub.ListUsers, pb.ListUsersRequest(), timeout=30)
        return [_user_row(user) for user in reply.users]

    def revoke_user(self, name: str) -> None:
        _call(self.stub.RevokeUser, pb.RevokeUserRequest(name=name), timeout=30)

    def audit(self, limit: int = 100) -> list[AuditRow]:
        reply = _call(self.stub.ListAudit, pb.ListAuditRequest(limit=limit), timeout=30)
        return [
            AuditRow(e.seq, e.time, e.who, e.action, e.project, e.target, e.outcome)
            for e in reply.entries
        ]

    def close(self) -> None:
        self.channel.close()


def _user_row(user: Any) -> UserRow:
    return UserRow(
        user.name,
        Role(user.role),
        frozenset(user.projects),
        user.created,
        user.created_by,
        user.revoked_at or None,
        user.revoked_by,
    )
