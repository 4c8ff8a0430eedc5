"""Who belongs to a hub: its users and nodes, the projects of each, and who was revoked.

``Members`` keeps what the hub's calls need on every request in memory (users, the projects
of nodes and runs, revoked nodes), written through to ``hub.db`` first, and manages it for
admins: each change is authorized (``access.authorize``) and audited (``audit.py``).

Invariants:

- ``check_caller`` is the one check of who presents a certificate: a user certificate never
  reads as a node's nor a node's as a user's (``security.certificates``), and a revoked user
  or node is refused, on this hub and every later one on its data dir;
- a node serves only runs of its projects (``refuses``, the fleet's rule), and a run belongs
  to the project it was submitted to;
- the admin credential: at its first start a TLS hub writes one (``user.key``, ``user.pem``,
  ``ca.pem``, user ``admin`` with role admin) into ``DATA_DIR/admin/`` (0700, files 0600), so
  its operator can act at once; a later start writes it again if it is missing, from another
  CA, or due for renewal (unless ``admin`` was revoked).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from datetime import UTC, datetime

from pollinate.errors import PollinateError
from pollinate.hub.access import (
    ADMIN_USER,
    DEFAULT_PROJECT,
    Action,
    Caller,
    Forbidden,
    NodeCaller,
    Role,
    check_name,
    check_projects,
)
from pollinate.hub.audit import OK, Audit
from pollinate.hub.credentials import HubCredentials
from pollinate.hub.state import HubState, NodeRow
from pollinate.hub.users import UserRow, Users
from pollinate.security import SecurityError, make_key_and_csr, should_renew
from pollinate.security.ca import USER_CERT_SECONDS
from pollinate.security.certificates import load_certificate, names_a_user
from pollinate.security.credentials import UserCredentials
from pollinate.security.keys import PublicKey, verified_csr_key
from pollinate.security.tokens import TokenKind

log = logging.getLogger("pollinate.hub")

USER_TOKEN_SECONDS = 24 * 3600.0
"""How long a user token (``add_user``) may wait to be redeemed: a day."""
VERIFIED_CERTIFICATES = 65_536
"""Certificates whose signature check is remembered (about 100 bytes each beyond the PEM)."""
ADMIN_DIR = "admin"
"""Where in its data dir a hub writes its admin credential."""


class Members:
    """The users and nodes of one hub, their projects, and revocation."""

    def __init__(self, state: HubState, audit: Audit, credentials: HubCredentials | None) -> None:
        self.state = state
        self.audit = audit
        self.credentials = credentials
        self.users = Users(state)
        self._projects_of_node = state.node_projects()
        self._project_of_run: dict[str, str] = {}
        self._revoked = {n.node_id: _revoked(n) for n in state.nodes() if n.revoked_at}
        self._verified_until: dict[bytes, tuple[int | str, float]] = {}
        if credentials is not None:
            try:
                self._write_admin_credential(credentials)
            except (PollinateError, OSError) as exc:  # a read-only data dir: the hub still serves
                log.warning("could not write the admin credential: %s", exc)

    # --- users ------------------------------------------------------------------------------

    def add_user(
        self, name: str, role: Role, projects: Iterable[str], ttl_seconds: float, caller: Caller
    ) -> str:
        """``Hub.add_user``."""
        example = "hub.add_user('alice', Role.MEMBER, ['cardiology'])"
        check_name("user name", name, example)
        role = _role(role, example)
        if role is Role.ADMIN:  # an admin's role holds in every project: they may name none
            scope = frozenset(check_name("project", p, example) for p in projects)
        else:
            scope = check_projects(projects, example)
        self.audit.authorize(caller, Action.MANAGE_USERS, None, f"user {name}")
        credentials = self._require_tls()
        self.users.add(name, role, scope, by=caller.name)
        token, _ = credentials.create_user_token(name, ttl_seconds)
        where = ",".join(sorted(scope))
        self.audit.record(caller.name, "add user", where, f"{name} ({role})", OK)
        return token

    def new_user_token(self, name: str, ttl_seconds: float, caller: Caller) -> str:
        """``Hub.new_user_token``."""
        self.audit.authorize(caller, Action.MANAGE_USERS, None, f"user {name}")
        row = self.users.get(name)
        if row is None or row.revoked_at is not None:
            state = "was revoked" if row else "does not exist"
            raise PollinateError(
                f"user {name!r} {state}: no token was made.\nHint: `pollinate user ls` lists "
                "the users; `pollinate user add NAME` adds one"
            )
        token, _ = self._require_tls().create_user_token(name, ttl_seconds)
        self.audit.record(caller.name, "new user token", "", name, OK)
        return token

    def log_in(self, token: str, token_id: str, public_key: PublicKey, host: str) -> bytes:
        """Spend a user token and sign the user's key (``Hub.redeem_user_token`` checked the
        token's form, the CSR and the source's rate)."""
        credentials = self._require_tls()
        name = credentials.tokens.redeem(token, TokenKind.USER).scope[0]
        row = self.users.get(name)
        if row is None or row.revoked_at is not None:
            self.audit.record(name, "log in", "", f"token {token_id}", "refused: revoked")
            raise SecurityError(f"user {name} was revoked: the login is refused")
        certificate = credentials.ca.sign_user_key(public_key, name, USER_CERT_SECONDS)
        log.info("user %s logged in from %s", name, host)
        self.audit.record(name, "log in", "", f"token {token_id} from {host}", OK)
        return certificate

    def renew_user(self, caller: Caller, public_key: PublicKey) -> bytes:
        """A new certificate for the calling user (``check_user`` accepted their current
        one, so they are not revoked)."""
        certificate = self._require_tls().ca.sign_user_key(public_key, caller.name)
        self.audit.record(caller.name, "renew certificate", "", caller.name, OK)
        return certificate

    def list_users(self, caller: Caller) -> list[UserRow]:
        self.audit.authorize(caller, Action.MANAGE_USERS, None, "users")
        return self.users.list()

    def revoke_user(self, name: str, caller: Caller) -> None:
        self.audit.authorize(caller, Action.MANAGE_USERS, None, f"user {name}")
        self.users.revoke(name, by=caller.name)
        log.warning("user %s revoked by %s", name, caller.name)
        self.audit.record(caller.name, "revoke user", "", name, OK)

    # --- nodes and projects -----------------------------------------------------------------

    def joined(self, node_id: int, projects: Iterable[str]) -> None:
        """Note the projects of a node just enrolled (``HubState.new_node`` recorded them)."""
        self._projects_of_node[node_id] = frozenset(projects)

    def node_projects(self, node_id: int) -> frozenset[str]:
        return self._projects_of_node.get(node_id, frozenset({DEFAULT_PROJECT}))

    def list_nodes(self, caller: Caller) -> list[NodeRow]:
        return [n for n in self.state.nodes() if any(map(caller.may_read, n.projects))]

    def revoke_node(self, node_id: int, caller: Caller) -> str:
        """Record the node revoked and return why its tasks fail (``Fleet.cut_off``)."""
        self.audit.authorize(caller, Action.REVOKE_NODES, None, f"node {node_id}")
        if not self.state.revoke_node(node_id, by=caller.name):
            raise PollinateError(
                f"no node {node_id}: nothing was revoked.\nHint: `pollinate node ls` lists the "
                "nodes"
            )
        node = next(n for n in self.state.nodes() if n.node_id == node_id)
        reason = self._revoked[node_id] = _revoked(node)
        log.warning("node %d revoked by %s", node_id, caller.name)
        self.audit.record(caller.name, "revoke node", "", f"node {node_id}", OK)
        return reason

    def revoked_nodes(self) -> dict[int, str]:
        """Each revoked node and why its tasks fail."""
        return dict(self._revoked)

    def note_run(self, run_id: str, project: str) -> None:
        self._project_of_run[run_id] = project

    def project_of(self, run_id: str) -> str:
        project = self._project_of_run.get(run_id)
        if project is not None:
            return project
        row = self.state.run(run_id)
        if row is None:  # no run of this hub's (a grid made by hand): the default project's
            return DEFAULT_PROJECT
        self._project_of_run[run_id] = row.project
        return row.project

    def refuses(self, node_id: int, run_id: str) -> str | None:
        """Why the node may not take tasks of the run (``Fleet.refuses``): the run's project
        is not one of the node's."""
        project, projects = self.project_of(run_id), self.node_projects(node_id)
        if project in projects:
            return None
        return (
            f"node {node_id} serves project {', '.join(sorted(projects))}, not {project} "
            f"(the project of run {run_id})"
        )

    # --- certificates -----------------------------------------------------------------------

    def check_caller(self, certificate_pem: bytes) -> Caller | NodeCaller:
        """``Hub.check_caller``."""
        who = self._verified(certificate_pem)
        if isinstance(who, int):
            node_id = who
            if reason := self._revoked.get(node_id):
                raise SecurityError(f"{reason}; enrol it again with a new token if it should serve")
            return NodeCaller(node_id, self.node_projects(node_id))
        name = who
        row = self.users.get(name)
        if row is None:
            raise SecurityError(f"this hub knows no user {name!r}: log in again with a new token")
        if row.revoked_at is not None:
            raise SecurityError(
                f"user {name} was revoked by {row.revoked_by} at {_iso(row.revoked_at)}: their "
                "certificate is refused"
            )
        return row.caller

    def _verified(self, certificate_pem: bytes) -> int | str:
        """The node id or user name a certificate of this hub's CA names, if it is valid
        now; SecurityError otherwise. Remembered until the certificate expires, so that a
        call costs a lookup, not a signature check (revocation is checked by the caller)."""
        now = time.time()
        known = self._verified_until.get(certificate_pem)
        if known is not None and now < known[1]:
            return known[0]
        ca = self._require_tls().ca
        certificate = load_certificate(certificate_pem)
        if names_a_user(certificate):
            who: int | str = ca.verify_user_certificate(certificate_pem)
        else:
            who = ca.verify_node_certificate(certificate_pem)
        if len(self._verified_until) >= VERIFIED_CERTIFICATES:
            self._verified_until.clear()  # a flood of certificates costs checks, not memory
        expires = certificate.not_valid_after_utc.timestamp()
        self._verified_until[certificate_pem] = (who, expires)
        return who

    def check_user(self, certificate_pem: bytes) -> Caller:
        caller = self.check_caller(certificate_pem)
        if isinstance(caller, NodeCaller):
            raise Forbidden(
                f"node {caller.node_id}'s certificate cannot make control calls: they need a "
                "user's.\nHint: log in (`pollinate login --hub HOST:PORT --token TOKEN`)"
            )
        return caller

    def check_node(self, certificate_pem: bytes) -> int:
        caller = self.check_caller(certificate_pem)
        if isinstance(caller, Caller):
            raise Forbidden(
                f"user {caller.name}'s certificate cannot call the fleet API: nodes enrol with "
                "a join token.\nHint: `pollinate token create`, then `pollinate node --token`"
            )
        return caller.node_id

    def _require_tls(self) -> HubCredentials:
        if self.credentials is None:
            raise PollinateError(
                "this hub runs with --insecure: it has no CA, so no users or certificates.\n"
                "Hint: start it without --insecure"
            )
        return self.credentials

    def _write_admin_credential(self, credentials: HubCredentials) -> None:
        if self.users.get(ADMIN_USER) is None:
            self.users.add(ADMIN_USER, Role.ADMIN, (), by="the hub, at its first start")
        admin = self.users.get(ADMIN_USER)
        if admin is None or admin.revoked_at is not None:
            return
        directory = self.state.data_dir / ADMIN_DIR
        saved = UserCredentials.load(directory)
        fresh = saved is not None and not should_renew(saved.cert_pem)
        if fresh and saved is not None and saved.ca_pem == credentials.ca.ca_pem:
            return
        key_pem, csr_pem = make_key_and_csr()
        certificate = credentials.ca.sign_user_key(verified_csr_key(csr_pem), ADMIN_USER)
        UserCredentials(key_pem, certificate, credentials.ca.ca_pem).save(directory)
        log.info("wrote the admin credential to %s (user %s, owner-only)", directory, ADMIN_USER)


def _revoked(node: NodeRow) -> str:
    """Why a revoked node's tasks fail and its calls are refused."""
    return f"node {node.node_id} was revoked by {node.revoked_by} at {_iso(node.revoked_at or 0)}"


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _role(role: str, example: str) -> Role:
    try:
        return Role(role)
    except ValueError:
        roles = ", ".join(r.value for r in Role)
        raise ValueError(f"role {role!r} is not one of {roles}.\nHint: {example}") from None
