"""The Hub: state, fleet and runs behind one object that the transport serves.

Everything here is plain Python; ``pollinate.transport`` turns RPCs into these calls.

A hub started on the data dir of one that stopped (cleanly or not) takes up where it left
off: the nodes it knew are expected back, and its unfinished runs resume (``runs.py``).

Who may do what (issue 14). Every control method takes the ``caller`` (``access.Caller``: a
user, from ``check_user`` on the certificate of the call) and asks ``access.authorize`` once;
its default, ``LOCAL_ADMIN``, is for a hub without user certificates (``--insecure``) and for
in-process calls. Each action and each refusal goes into the audit (``audit.py``). The
transport calls ``check_caller`` (or its narrow forms ``check_user`` and ``check_node``) on
every request: it refuses certificates of revoked users and nodes.

With TLS, at its first start a hub writes an admin credential (``user.key``, ``user.pem``,
``ca.pem``; user ``admin``, role admin) into ``DATA_DIR/admin/`` (0700, files 0600), so that
its operator can act at once (``members.py`` says when it is written again).
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path

from pollinate.errors import PollinateError
from pollinate.hub.access import (
    DEFAULT_PROJECT,
    LOCAL_ADMIN,
    Action,
    Caller,
    NodeCaller,
    Role,
    check_name,
    check_projects,
)
from pollinate.hub.audit import OK, Audit, AuditRow
from pollinate.hub.credentials import HubCredentials
from pollinate.hub.fleet import Fleet, QueuedTask, Refused, TryLater, UnknownTask
from pollinate.hub.group_commit import GroupCommit
from pollinate.hub.journal import Journal, NoModel
from pollinate.hub.members import USER_TOKEN_SECONDS, Members
from pollinate.hub.placement import NodePlacement
from pollinate.hub.rate_limit import RateLimiter, source_of
from pollinate.hub.runs import Runs
from pollinate.hub.state import HubState, LogRow, NodeRow, RunRow
from pollinate.hub.supervisor import RunLimits
from pollinate.hub.users import UserRow
from pollinate.placement import Placement, parse_selector
from pollinate.records import Arrays, Message
from pollinate.security import SecurityError, parse_token
from pollinate.security.keys import verified_csr_key
from pollinate.security.tokens import TokenKind

log = logging.getLogger("pollinate.hub")

ENROL_BURST = 200
"""Enrolment attempts one source address may make at once. A fleet of 100 nodes started
together behind one NAT address fits twice over; a stranger guessing tokens gets 200 tries,
then ``ENROL_PER_SECOND``."""
ENROL_PER_SECOND = 2.0
"""Enrolment attempts a source earns back each second: 120 a minute, more than an operator
enrolling by hand or a fleet rolled out over a few minutes needs (a refused node tries again
a moment later, its token unspent)."""
LOG_EVERY_REFUSED = 100
"""Of a source's attempts refused in a row for its rate, the first and every this many are
logged: a flood of attempts is a few lines, not one each."""


class TooManyAttempts(Refused):
    """A source made more enrolment attempts than its rate allows; nothing was read or spent."""


class Hub:
    """A hub over ``data_dir``: serves many runs over its life.

    Args:
        data_dir: where state (SQLite), blobs and certificates live.
        heartbeat_timeout: seconds of silence after which a node's tasks fail.
        heartbeat_interval: how often nodes are told to send heartbeats.
        enrol_limit: enrolment attempts per source address (default: ``ENROL_BURST`` at once,
            then ``ENROL_PER_SECOND``).
        run_limits: what bounds each run's process (``supervisor.RunLimits``: its memory).
    """

    def __init__(
        self,
        data_dir: str | Path,
        *,
        heartbeat_timeout: float = 30.0,
        heartbeat_interval: float = 5.0,
        credentials: HubCredentials | None = None,
        enrol_limit: RateLimiter | None = None,
        run_limits: RunLimits | None = None,
    ) -> None:
        self.state = HubState(data_dir)
        self.credentials = credentials
        self.audit_trail = Audit(self.state)
        self.members = Members(self.state, self.audit_trail, credentials)
        self.fleet = Fleet(heartbeat_timeout, refuses=self.members.refuses)
        for node_id, reason in self.members.revoked_nodes().items():
            self.fleet.cut_off(node_id, reason)
        self.fleet.presume_alive(self.state.alive_at_last_note(heartbeat_timeout))
        self.placement = NodePlacement(self.state, self.fleet, self.audit_trail)
        self._note_arrival = GroupCommit(self._mark_alive)
        """Notes an arriving node in hub.db before its heartbeat is answered; arrivals at
        the same moment (a fleet reconnecting) share one transaction."""
        self.journal = Journal(self.state)
        with contextlib.suppress(PollinateError):  # leftovers cost space, not correctness
            if swept := self.journal.sweep():
                log.info("deleted %d files a previous hub left half-written or unused", swept)
        self.runs = Runs(self.state, self.fleet, self.journal, run_limits)
        self.events = self.runs.events  # subscribe here to every run's events
        self.heartbeat_interval = heartbeat_interval
        self.array_bytes_received = 0
        """Array bytes of every reply the hub recorded (the fleet counts those it sent)."""
        self._counting = threading.Lock()
        self.enrol_limit = enrol_limit or RateLimiter(ENROL_BURST, ENROL_PER_SECOND)
        self._closed = threading.Event()
        self.serving = threading.Event()  # set by start(): its ports listen, its runs resumed
        self._watchdog = threading.Thread(target=self._watch, name="hub-watchdog", daemon=True)
        self._watchdog.start()

    # --- fleet API --------------------------------------------------------------------------

    def node_id_for_name(self, name: str) -> int:
        return self.state.node_for_name(name)

    def heartbeat(
        self,
        node_id: int,
        app_hash: str,
        node_config: dict[str, str],
        session: str = "",
        labels: dict[str, str] | None = None,
        resources: dict[str, str] | None = None,
    ) -> None:
        self.placement.heard(node_id, labels or {}, resources or {})  # a restarted hub's too
        if self.fleet.heartbeat(node_id, app_hash, node_config, session, labels, resources):
            # noted at once (the watchdog notes the rest): a hub restarted a moment from now
            # must expect this node back
            try:
                self._note_arrival(node_id)
            except PollinateError as exc:
                log.warning("could not note node %d as alive: %s", node_id, exc)

    def _mark_alive(self, node_ids: list[int]) -> list[None]:
        self.state.mark_alive(node_ids)
        return [None] * len(node_ids)

    def heartbeat_in_memory(
        self,
        node_id: int,
        app_hash: str,
        node_config: dict[str, str],
        session: str,
        labels: dict[str, str],
        resources: dict[str, str],
    ) -> bool:
        """Note a heartbeat that writes nothing (``Fleet.beat``: the node is alive in this
        session, and it reports the labels and resources kept for it): True. False, noting
        nothing: call ``heartbeat``, which may write to hub.db, off the event loop. The fleet
        service tries this first, on the event loop: a steady fleet's heartbeats cost no
        thread."""
        if not self.placement.keeps(node_id, labels, resources):
            return False
        return self.fleet.beat(node_id, app_hash, node_config, session, labels, resources)

    def next_task(
        self, node_id: int, wait: float, active: Callable[[], bool] | None = None
    ) -> QueuedTask | None:
        """The node's next task, or None; ``active`` says whether the node still listens."""
        # a pull is a sign of life too: a node busy pulling is not silent
        self.fleet.sign_of_life(node_id)
        return self.fleet.next_task(node_id, wait, active)

    def accept_reply(self, node_id: int, message: Message) -> bool:
        """Record a node's reply, then route it to its run; True if it went to a round that
        waits for it, False if it is recorded for a round that will ask for it later.

        Refused (with the reason) if it has no place; TryLater if it cannot be recorded now
        (StorageError) or another push of it is being recorded: the node pushes again. A
        reply recorded before (the node did not hear "accepted") is accepted again, once.
        """
        return self._accept(node_id, message, lambda: self.journal.record(message))

    def accept_file(self, node_id: int, message: Message, path: Path) -> bool:
        """``accept_reply`` for a reply whose bytes are on disk in ``path`` already (a
        finished ``Journal.reply_file``: the transport writes a reply there as it arrives,
        and ``message`` is a view of it). The file is removed unless it is recorded."""
        recorded = False

        def record() -> bool:
            nonlocal recorded
            recorded = self.journal.record_file(message, path)
            return recorded

        try:
            return self._accept(node_id, message, record)
        finally:
            if not recorded:  # a disk that refuses leaves it to the journal's sweep
                with contextlib.suppress(OSError):
                    path.unlink(missing_ok=True)

    def _accept(self, node_id: int, message: Message, record: Callable[[], bool]) -> bool:
        """``accept_reply``, with ``record`` putting the reply on disk (``Journal.record``)."""
        if not message.is_reply:
            raise Refused("the message is not a reply")
        try:
            task = self.fleet.claim(node_id, message)
        except UnknownTask:
            queued = self._accept_unqueued(node_id, message, record)
            if queued is None:
                return False
            task = queued
        recorded = False
        try:
            recorded = record()
        finally:
            (self.fleet.settle if recorded else self.fleet.unclaim)(task)
        if not recorded:
            raise Refused(f"task {message.task_id!r} closed (its stage ended) as its reply came")
        with self._counting:
            self.array_bytes_received += 0 if message.arrays is None else message.arrays.nbytes
        task.replies.put(message)
        return True

    def check_reply(self, node_id: int, head: Message, array_bytes: int) -> None:
        """Refuse a reply from its header, before any of its arrays is read: it must answer a
        task of this node, match it, and declare no more array bytes than the task allows
        (``Fleet.vet``). A task this process has not queued must be one the journal knows for
        this node (sent before a restart), and an evaluate reply never holds arrays."""
        if not head.is_reply:
            raise Refused("the message is not a reply")
        if self.fleet.vet(node_id, head, array_bytes):
            return
        self._check_journaled(node_id, head)
        if head.kind == "evaluate" and array_bytes:
            raise Refused(f"an evaluate reply holds no arrays; this one declares {array_bytes}")

    def _check_journaled(self, node_id: int, message: Message) -> None:
        """UnknownTask unless the journal knows ``message``'s task as sent to this node, for
        the run and round the message names."""
        row = self.journal.task(message.task_id)
        said = (node_id, message.node_id, message.run_id, message.round)
        if row is None or said != (row.node_id, row.node_id, row.run_id, row.round):
            raise UnknownTask(
                f"reply for task {message.task_id!r}, which is unknown or already closed "
                "(answered, or its round ended)"
            )

    def open_poll(self, node_id: int) -> int:
        """Start a long-poll of the node (``Fleet.open_poll``); a pull is a sign of life."""
        self.fleet.sign_of_life(node_id)
        return self.fleet.open_poll(node_id)

    def _accept_unqueued(
        self, node_id: int, message: Message, record: Callable[[], bool]
    ) -> QueuedTask | None:
        """A reply to a task this process has not queued: one recorded before (its node did
        not hear "accepted"), or one sent before a restart that its round has not sent again
        yet, which is recorded now and handed back when the round asks. Returns the task
        instead if its round queued it meanwhile: the caller records and routes it."""
        if self.fleet.claimed(message.task_id):
            raise TryLater(f"another push of the reply to {message.task_id!r} is being recorded")
        with self.journal.lock:  # the round cannot open its tasks meanwhile
            with contextlib.suppress(UnknownTask):
                return self.fleet.claim(node_id, message)
            self._check_journaled(node_id, message)
            if not record():
                raise Refused(f"task {message.task_id!r} closed (its stage ended)")
        log.info("node %d: reply to %s recorded", node_id, message.task_id)
        return None

    def enrol(self, token: str, csr_pem: bytes, source: str) -> tuple[bytes, bytes, int]:
        """(certificate, CA certificate, node id) for a node redeeming a join token.

        ``source`` is the peer's address as gRPC gives it (``ipv4:10.0.0.7:53422``); each
        host may try ``enrol_limit`` times (TooManyAttempts past it). The CSR is checked
        before the token is spent: a node refused for its CSR keeps its token.
        """
        credentials = self._require_tls()
        host = source_of(source)
        if not self.enrol_limit.allow(host):
            raise self._too_many_attempts(host)
        try:
            token_id = parse_token(token).id  # the cheap check first
            public_key = verified_csr_key(csr_pem)
            projects = credentials.tokens.redeem(token, TokenKind.JOIN).scope
        except SecurityError as exc:
            log.warning("refused an enrolment from %s: %s", host, exc)
            raise
        node_id = self.state.new_node(projects)
        self.members.joined(node_id, projects)
        certificate = credentials.ca.sign_node_key(public_key, node_id, credentials.cert_lifetime)
        self.placement.note_certificate(node_id, certificate)
        log.info("node %d enrolled from %s into %s", node_id, host, ", ".join(projects))
        where = ",".join(projects)
        self.audit_trail.record(f"token {token_id}", "enrol a node", where, f"node {node_id}", OK)
        return certificate, credentials.ca.ca_pem, node_id

    def _too_many_attempts(self, host: str) -> TooManyAttempts:
        limit, refused = self.enrol_limit, self.enrol_limit.refused_in_a_row(host)
        rate = f"{limit.burst} at once, then {limit.per_second:g} a second"
        if refused == 1 or refused % LOG_EVERY_REFUSED == 0:
            log.warning(
                "refused an enrolment from %s: too many attempts (over %s; %d refused in a row)",
                host,
                rate,
                refused,
            )
        wait = max(1, math.ceil(limit.retry_after(host)))
        return TooManyAttempts(
            f"too many enrolment attempts from {host} (the hub takes {rate} from one address): "
            f"nothing was spent; try again in {wait} s"
        )

    def diagnose(self, certificate_pem: bytes) -> str | None:
        """Why the fleet port would refuse this node certificate, or None if it would not."""
        try:
            self.check_node(certificate_pem)
        except PollinateError as exc:
            log.warning("a node's certificate is refused: %s", exc)
            return str(exc)
        return None

    def renew(self, node_id: int, csr_pem: bytes) -> bytes:
        """A new certificate for the node; SecurityError if it was revoked."""
        credentials = self._require_tls()
        if reason := self.members.revoked_nodes().get(node_id):
            raise SecurityError(f"renewal refused: {reason}")
        certificate = credentials.renew(node_id, csr_pem)
        self.placement.note_certificate(node_id, certificate)
        return certificate

    def _require_tls(self) -> HubCredentials:
        if self.credentials is None:
            raise Refused("this hub runs with --insecure: there is nothing to enrol in")
        return self.credentials

    # --- control API ------------------------------------------------------------------------

    def submit_run(
        self,
        archive: bytes,
        app_hash: str,
        overrides: dict[str, str],
        rounds: int | None,
        seed: int,
        *,
        project: str = DEFAULT_PROJECT,
        caller: Caller = LOCAL_ADMIN,
        select: str = "",
        min_nodes: int = 0,
        max_nodes: int = 0,
    ) -> str:
        """Start a run of the app in ``archive`` in ``project``; ``rounds`` None runs the
        app's own number. Only the project's nodes take its tasks, and of them only those
        that match ``select`` (``pollinate.placement``; SelectorError if it does not parse);
        each round waits for ``min_nodes`` of them (0: the strategy's own minimum) and uses
        at most ``max_nodes`` (0: no maximum); PlacementError if the counts cannot be."""
        check_name("project", project, "hub.submit_run(..., project='cardiology')")
        # SelectorError and PlacementError (AppErrors) name the mistake
        placement = Placement(parse_selector(select), min_nodes, max_nodes)
        app = f"app {app_hash[:16]}"
        self.audit_trail.authorize(caller, Action.SUBMIT, project, app)
        try:
            with self.state.submitting_to(project):
                run_id = self.runs.submit(archive, app_hash, overrides, rounds, seed, placement)
        except PollinateError as exc:
            self.audit_trail.record(caller.name, "submit run", project, app, f"failed: {exc}")
            raise
        self.members.note_run(run_id, project)
        self.audit_trail.record(caller.name, "submit run", project, f"run {run_id}", OK)
        return run_id

    def list_runs(self, *, caller: Caller = LOCAL_ADMIN) -> list[RunRow]:
        """The runs of the projects ``caller`` may read (an admin's: all)."""
        rows = [row for row in self.state.runs() if caller.may_read(row.project)]
        return [
            replace(row, detail=f"paused: {problem}")
            if (problem := self.runs.storage_problem(row.run_id))
            else row
            for row in rows
        ]

    def run_info(self, run_id: str, *, caller: Caller = LOCAL_ADMIN) -> RunRow | None:
        """The run, None if there is none; Forbidden if ``caller`` may not read it."""
        row = self.state.run(run_id)
        if row is not None:
            self.audit_trail.authorize(caller, Action.READ, row.project, f"run {run_id}")
        return row

    def model(
        self, run_id: str, round: int | None = None, *, caller: Caller = LOCAL_ADMIN
    ) -> tuple[int, Arrays]:
        """The run's global model at the end of ``round`` (default: the newest round that
        ended), with that round: what ``pollinate pull`` saves. Forbidden if ``caller`` may
        not read the run; NoModel (``hub.journal``) if there is no such run or round."""
        if round is not None and (isinstance(round, bool) or not isinstance(round, int)):
            raise TypeError(f"round must be an int or None, got {round!r}")
        if round is not None and round < 0:
            raise ValueError(f"round {round} is negative.\nHint: hub.model(run_id, round=3)")
        row = self.state.run(run_id)
        if row is None:
            raise NoModel(f"no run {run_id!r} on this hub.\nHint: pollinate ls lists the runs")
        self.audit_trail.authorize(caller, Action.READ, row.project, f"run {run_id}")
        pulled = self.journal.model(run_id, round)
        where = f"run {run_id} round {pulled[0]}"
        self.audit_trail.record(caller.name, "pull model", row.project, where, OK)
        return pulled

    def stop_run(self, run_id: str, *, caller: Caller = LOCAL_ADMIN) -> str | None:
        """Stop a run; None if stopped, else why not. Forbidden if ``caller`` may not."""
        row = self.state.run(run_id)
        if row is None:
            return self.runs.stop(run_id)  # it says there is no such run
        self.audit_trail.authorize(caller, Action.STOP, row.project, f"run {run_id}")
        reason = self.runs.stop(run_id)
        self.audit_trail.record(caller.name, "stop run", row.project, f"run {run_id}", reason or OK)
        return reason

    def create_token(
        self,
        ttl_seconds: float,
        *,
        projects: Iterable[str] = (DEFAULT_PROJECT,),
        uses: int = 1,
        caller: Caller = LOCAL_ADMIN,
    ) -> tuple[str, float]:
        """A join token that enrols up to ``uses`` nodes into ``projects``, and when it
        expires (epoch seconds). Admins only."""
        scope = check_projects(projects, "hub.create_token(600, projects=['cardiology'])")
        where = ",".join(sorted(scope))
        self.audit_trail.authorize(caller, Action.MANAGE_TOKENS, None, f"join token for {where}")
        credentials = self._require_tls()
        token, expires = credentials.create_token(ttl_seconds, tuple(sorted(scope)), uses)
        target = f"join token {parse_token(token).id} ({uses} uses)"
        self.audit_trail.record(caller.name, "create join token", where, target, OK)
        return token, expires

    def wait_log(
        self, run_id: str, after: int, wait: float, *, caller: Caller = LOCAL_ADMIN
    ) -> list[LogRow]:
        """Log entries after ``after``, waiting up to ``wait`` seconds for new ones.
        Forbidden if ``caller`` may not read the run; a follow (``after`` 0) is audited."""
        row = self.run_info(run_id, caller=caller)
        if row is not None and after == 0:
            self.audit_trail.record(caller.name, "read log", row.project, f"run {run_id}", OK)
        deadline = time.monotonic() + wait
        with self.runs.changed:
            while True:
                rows = self.state.log_after(run_id, after)
                remaining = deadline - time.monotonic()
                if rows or remaining <= 0:
                    return rows
                self.runs.changed.wait(remaining)

    # --- users, projects, revocation, audit (``members.py``) -------------------------------

    def add_user(
        self,
        name: str,
        role: Role,
        projects: Iterable[str] = (),
        *,
        ttl_seconds: float = USER_TOKEN_SECONDS,
        caller: Caller = LOCAL_ADMIN,
    ) -> str:
        """Add a user with ``role`` in ``projects`` (an admin's role holds in every project)
        and return the one-time token that logs them in (``redeem_user_token``), valid for
        ``ttl_seconds``. Admins only; a name taken (or revoked) before is refused."""
        return self.members.add_user(name, role, projects, ttl_seconds, caller)

    def new_user_token(
        self, name: str, *, ttl_seconds: float = USER_TOKEN_SECONDS, caller: Caller = LOCAL_ADMIN
    ) -> str:
        """Another one-time login token for an existing user (theirs was lost or expired, or
        their certificate is about to). Admins only."""
        return self.members.new_user_token(name, ttl_seconds, caller)

    def redeem_user_token(
        self, token: str, csr_pem: bytes, source: str = ""
    ) -> tuple[bytes, bytes]:
        """(user certificate, CA certificate) for a user logging in with the token
        ``add_user`` made. As for ``enrol``: each source address may try ``enrol_limit``
        times, and the CSR is checked before the token is spent."""
        credentials = self._require_tls()
        host = source_of(source) if source else "in-process"
        if not self.enrol_limit.allow(host):
            raise self._too_many_attempts(host)
        try:
            token_id = parse_token(token).id
            certificate = self.members.log_in(token, token_id, verified_csr_key(csr_pem), host)
        except SecurityError as exc:
            log.warning("refused a login from %s: %s", host, exc)
            raise
        return certificate, credentials.ca.ca_pem

    def renew_user(self, caller: Caller, csr_pem: bytes) -> tuple[bytes, bytes]:
        """(new certificate, CA certificate) for the calling user, on the key in their CSR."""
        certificate = self.members.renew_user(caller, verified_csr_key(csr_pem))
        return certificate, self._require_tls().ca.ca_pem

    def list_users(self, *, caller: Caller = LOCAL_ADMIN) -> list[UserRow]:
        """Every user, revoked ones too. Admins only."""
        return self.members.list_users(caller)

    def revoke_user(self, name: str, *, caller: Caller = LOCAL_ADMIN) -> None:
        """Revoke a user: every later call with their certificate is refused
        (``check_caller``), on this hub and the next on its data dir. Admins only."""
        self.members.revoke_user(name, caller)

    def revoke_node(self, node_id: int, *, caller: Caller = LOCAL_ADMIN) -> None:
        """Revoke a node: its queued and taken tasks fail with the reason (their runs go on),
        its calls and renewal are refused, on this hub and the next on its data dir.
        Admins only."""
        self.fleet.cut_off(node_id, self.members.revoke_node(node_id, caller))

    def label_node(
        self,
        node_id: int,
        set: dict[str, str],  # the transport's keyword, though it shadows the builtin
        remove: list[str],
        *,
        caller: Caller = LOCAL_ADMIN,
    ) -> dict[str, str]:
        """Set labels on the node from the hub (they override its own labels of the same
        key) and remove labels set so before; returns the node's labels now. Kept across hub
        restarts; placement reads them from the next round. Admins only."""
        return self.placement.label(node_id, set, remove, caller)

    def cordon_node(self, node_id: int, cordoned: bool, *, caller: Caller = LOCAL_ADMIN) -> None:
        """Cordon the node (no run places new tasks on it from its next round; what it holds
        is answered as usual) or, with ``cordoned`` False, uncordon it. Kept across hub
        restarts. Admins only."""
        self.placement.cordon(node_id, cordoned, caller)

    def list_nodes(self, *, caller: Caller = LOCAL_ADMIN) -> list[NodeRow]:
        """The nodes of the projects ``caller`` may read (an admin's: all), revoked ones too."""
        return self.members.list_nodes(caller)

    def node_projects(self, node_id: int) -> frozenset[str]:
        """The projects whose runs the node serves (the token that enrolled it said which)."""
        return self.members.node_projects(node_id)

    def check_caller(self, certificate_pem: bytes) -> Caller | NodeCaller:
        """Who presents this certificate: a user (``Caller``) or a node (``NodeCaller``);
        SecurityError if this hub's CA did not issue it, it is not valid now, or its user or
        node was revoked. The transport calls it (or ``check_user``/``check_node``) on every
        request."""
        return self.members.check_caller(certificate_pem)

    def check_user(self, certificate_pem: bytes) -> Caller:
        """The user a control call comes from (``check_caller``); Forbidden for a node."""
        return self.members.check_user(certificate_pem)

    def check_node(self, certificate_pem: bytes) -> int:
        """The node a fleet call comes from (``check_caller``); Forbidden for a user."""
        return self.members.check_node(certificate_pem)

    def audit(self, limit: int = 100, *, caller: Caller = LOCAL_ADMIN) -> list[AuditRow]:
        """The newest ``limit`` control actions, newest first. Admins only."""
        self.audit_trail.authorize(caller, Action.READ_AUDIT, None, "audit")
        return self.audit_trail.recent(limit)

    def start(self) -> None:
        """Resume the runs the last hub on this data dir left running; call once this hub
        serves (a hub that cannot bind its ports must not touch them)."""
        self.runs.resume_all()
        self.serving.set()

    def close(self) -> None:
        self.serving.clear()
        self._closed.set()
        self.runs.close()  # run processes end; their runs stay running, for the next hub
        # waiting long-polls hold server threads that the interpreter joins at exit
        self.fleet.close()
        self._watchdog.join(timeout=5)

    # --- internals --------------------------------------------------------------------------

    def _watch(self) -> None:
        """Fail silent nodes' tasks; note the live fleet, which a restarted hub expects back."""
        period = min(1.0, self.fleet.heartbeat_timeout / 4)
        noted = 0.0
        while not self._closed.wait(period):
            self.fleet.fail_silent_nodes()
            if time.monotonic() - noted >= self.fleet.heartbeat_timeout / 3:
                noted = time.monotonic()
                try:
                    self.state.mark_alive(self.fleet.confirmed_alive())
                except PollinateError as exc:
                    log.warning("could not note the live nodes: %s", exc)
