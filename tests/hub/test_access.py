"""Who may do what at a hub: users and roles, projects, revocation, the audit.

Real Hub objects with real credentials (CA, SQLite, certificates) in tmp_path, without gRPC
and without run processes: what the transport will pass (certificates, tokens, CSRs) is
passed here directly, and runs are rows recorded as ``Hub.submit_run`` records them.
"""

from __future__ import annotations

import hashlib
import queue
import sqlite3
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from pollinate.hub.access import LOCAL_ADMIN, Action, Caller, Forbidden, NodeCaller, Role, authorize
from pollinate.hub.credentials import HubCredentials
from pollinate.hub.fleet import QueuedTask
from pollinate.hub.grid import HubGrid
from pollinate.hub.hub import Hub
from pollinate.hub.members import ADMIN_DIR
from pollinate.hub.state import RunRow, RunStatus
from pollinate.records import Arrays, Message
from pollinate.security import (
    SecurityError,
    UserCredentials,
    make_key_and_csr,
    node_id_from_certificate,
)

ALICE = Caller("alice", Role.VIEWER, frozenset({"cardiology"}))
BOB = Caller("bob", Role.MEMBER, frozenset({"cardiology"}))
ROOT = Caller("root", Role.ADMIN, frozenset())


def start_hub(data_dir: Path) -> Hub:
    credentials = HubCredentials.load_or_create(data_dir, ["localhost"], ["127.0.0.1"], 3600)
    return Hub(data_dir, credentials=credentials)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "hub"
    path.mkdir()
    return path


@pytest.fixture
def hub(data_dir: Path) -> Iterator[Hub]:
    hub = start_hub(data_dir)
    yield hub
    stop(hub)


def stop(hub: Hub) -> None:
    hub.close()
    hub.state.close()


def enrol(hub: Hub, token: str) -> tuple[int, bytes]:
    certificate, _, node_id = hub.enrol(token, make_key_and_csr()[1], "ipv4:192.0.2.7:1")
    return node_id, certificate


def log_in(hub: Hub, token: str) -> bytes:
    return hub.redeem_user_token(token, make_key_and_csr()[1], "ipv4:192.0.2.8:1")[0]


def record_run(hub: Hub, run_id: str, project: str) -> None:
    """A run as ``Hub.submit_run`` records it (without its process)."""
    row = RunRow(run_id, "app", "h", "a", {}, 1, 0, RunStatus.FINISHED, 0, time.time(), "")
    with hub.state.submitting_to(project):
        hub.state.add_run(row, ("status", "submitted"))


def fit(node_id: int, run_id: str) -> Message:
    arrays = Arrays({"w": np.zeros(2, dtype=np.float32)})
    return Message(
        "fit", task_id=f"{run_id}-{node_id}", run_id=run_id, round=1, node_id=node_id, arrays=arrays
    )


# --- authorize: one function, every refusal says what was needed -----------------------------


def test_an_admin_may_do_everything_in_every_project() -> None:
    for action in Action:
        authorize(ROOT, action, "anything")
        authorize(ROOT, action, None)


def test_a_member_submits_stops_and_reads_in_their_projects_only() -> None:
    for action in (Action.SUBMIT, Action.STOP, Action.READ):
        authorize(BOB, action, "cardiology")
    with pytest.raises(
        Forbidden,
        match=r"^user bob \(member in cardiology\) cannot submit runs: "
        r"that needs role member or admin in project oncology\.",
    ):
        authorize(BOB, Action.SUBMIT, "oncology")
    with pytest.raises(Forbidden, match=r"cannot revoke nodes: that needs role admin\.\nHint"):
        authorize(BOB, Action.REVOKE_NODES)


def test_a_viewer_reads_and_is_told_which_role_stopping_needs() -> None:
    authorize(ALICE, Action.READ, "cardiology")
    with pytest.raises(Forbidden) as refused:
        authorize(ALICE, Action.STOP, "cardiology")
    assert str(refused.value).splitlines()[0] == (
        "user alice (viewer in cardiology) cannot stop runs: that needs role member or admin "
        "in project cardiology."
    )


@pytest.mark.parametrize(
    "action",
    [
        Action.MANAGE_TOKENS,
        Action.MANAGE_USERS,
        Action.REVOKE_NODES,
        Action.MANAGE_NODES,
        Action.READ_AUDIT,
    ],
)
def test_only_admins_manage_the_hub(action: Action) -> None:
    with pytest.raises(Forbidden, match="needs role admin"):
        authorize(BOB, action)


# --- users ------------------------------------------------------------------------------------


def test_a_user_logs_in_once_with_their_token_and_is_known_by_their_certificate(hub: Hub) -> None:
    token = hub.add_user("alice", Role.VIEWER, ["cardiology"])
    certificate = log_in(hub, token)
    assert hub.check_caller(certificate) == ALICE
    assert hub.check_user(certificate) == ALICE
    with pytest.raises(SecurityError, match="already used .* one login only"):
        log_in(hub, token)
    assert [(u.name, u.role, u.revoked_at) for u in hub.list_users()] == [
        ("admin", Role.ADMIN, None),
        ("alice", Role.VIEWER, None),
    ]


def test_a_user_token_enrols_no_node_and_a_join_token_logs_no_one_in(hub: Hub) -> None:
    user_token = hub.add_user("alice", Role.VIEWER, ["cardiology"])
    with pytest.raises(SecurityError, match="is a user token, not a join token: it logs a user in"):
        enrol(hub, user_token)
    join_token = hub.create_token(600)[0]
    with pytest.raises(SecurityError, match="is a join token, not a user token: it enrols a node"):
        log_in(hub, join_token)
    log_in(hub, user_token)  # the refusals spent neither
    enrol(hub, join_token)


def test_a_user_certificate_never_reads_as_a_node_nor_a_node_certificate_as_a_user(
    hub: Hub,
) -> None:
    user = log_in(hub, hub.add_user("node-7", Role.MEMBER, ["default"]))  # a name like a node's
    node_id, node = enrol(hub, hub.create_token(600)[0])
    ca = hub.members._require_tls().ca
    with pytest.raises(SecurityError, match="is not a node's"):
        ca.verify_node_certificate(user)
    with pytest.raises(SecurityError, match="is not a node's"):
        node_id_from_certificate(user)  # what the fleet port reads today
    with pytest.raises(SecurityError, match="is not a user's"):
        ca.verify_user_certificate(node)
    with pytest.raises(Forbidden, match="user node-7's certificate cannot call the fleet API"):
        hub.check_node(user)
    with pytest.raises(Forbidden, match=f"node {node_id}'s certificate cannot make control calls"):
        hub.check_user(node)
    assert hub.check_caller(node) == NodeCaller(node_id, frozenset({"default"}))
    assert hub.check_node(node) == node_id


def test_a_user_name_is_checked_and_a_taken_one_refused(hub: Hub) -> None:
    with pytest.raises(ValueError, match=r"user name 'al ice' is not a valid name.*\nHint: "):
        hub.add_user("al ice", Role.VIEWER, ["cardiology"])
    with pytest.raises(ValueError, match="role 'owner' is not one of admin, member, viewer"):
        hub.add_user("alice", "owner", ["cardiology"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="projects is empty"):
        hub.add_user("alice", Role.MEMBER, [])
    hub.add_user("alice", Role.MEMBER, ["cardiology"])
    with pytest.raises(Exception, match="there is a user 'alice' already"):
        hub.add_user("alice", Role.VIEWER, ["cardiology"])


def test_only_admins_add_users(hub: Hub) -> None:
    with pytest.raises(Forbidden, match=r"user bob \(member in cardiology\) cannot manage users"):
        hub.add_user("carol", Role.VIEWER, ["cardiology"], caller=BOB)
    assert [u.name for u in hub.list_users()] == ["admin"]


def test_the_hub_writes_an_admin_credential_at_its_first_start(data_dir: Path) -> None:
    hub = start_hub(data_dir)
    directory = data_dir / ADMIN_DIR
    saved = UserCredentials.load(directory)
    assert saved is not None
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for name in UserCredentials.FILES:
        assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600
    admin = hub.check_user(saved.cert_pem)
    assert (admin.name, admin.role) == ("admin", Role.ADMIN)
    hub.add_user("alice", Role.VIEWER, ["cardiology"], caller=admin)  # the operator acts at once
    stop(hub)
    stop(start_hub(data_dir))
    assert UserCredentials.load(directory) == saved  # written once, not at every start


# --- projects ---------------------------------------------------------------------------------


def test_a_join_token_serves_its_uses_and_enrols_into_its_projects(hub: Hub) -> None:
    token = hub.create_token(600, projects=["cardiology", "oncology"], uses=2)[0]
    first, _ = enrol(hub, token)
    second, _ = enrol(hub, token)
    with pytest.raises(
        SecurityError, match=r"already used \(at .*\); it serves 2 nodes, and it did"
    ):
        enrol(hub, token)
    assert hub.node_projects(first) == hub.node_projects(second) == {"cardiology", "oncology"}
    assert hub.node_projects(enrol(hub, hub.create_token(600)[0])[0]) == {"default"}


def test_project_a_nodes_never_receive_project_b_tasks(hub: Hub) -> None:
    a, _ = enrol(hub, hub.create_token(600, projects=["a"])[0])
    b, _ = enrol(hub, hub.create_token(600, projects=["b"])[0])
    for node in (a, b):
        hub.heartbeat(node, "apphash", {})
    record_run(hub, "run-b", "b")
    grid = HubGrid(hub.fleet, hub.journal, "run-b", "apphash", {})
    assert grid.nodes() == [b]  # the run samples only its project's nodes

    # a task for the wrong node (a sampling race, a bug) fails at once, saying why
    replies = grid.dispatch([fit(a, "run-b"), fit(b, "run-b")], 5.0)
    assert next(replies).error == f"node {a} serves project a, not b (the project of run run-b)"
    assert hub.next_task(a, 0) is None
    task = hub.next_task(b, 0)
    assert task is not None and task.message.run_id == "run-b"
    replies.close()


def test_listings_show_only_the_callers_projects(hub: Hub) -> None:
    record_run(hub, "r-cardio", "cardiology")
    record_run(hub, "r-onco", "oncology")
    assert [r.run_id for r in hub.list_runs()] == ["r-cardio", "r-onco"]
    assert [(r.run_id, r.project) for r in hub.list_runs(caller=ALICE)] == [
        ("r-cardio", "cardiology")
    ]
    with pytest.raises(Forbidden, match="cannot read runs: that needs role .* project oncology"):
        hub.wait_log("r-onco", 0, 0, caller=ALICE)
    assert hub.wait_log("r-cardio", 0, 0, caller=ALICE)[0].text.startswith("submitted")


def test_a_viewer_cannot_stop_nor_submit(hub: Hub) -> None:
    record_run(hub, "r", "cardiology")
    with pytest.raises(Forbidden, match=r"alice \(viewer in cardiology\) cannot stop runs"):
        hub.stop_run("r", caller=ALICE)
    with pytest.raises(Forbidden, match="cannot submit runs"):
        hub.submit_run(b"", "0" * 64, {}, None, 0, project="cardiology", caller=ALICE)
    assert hub.stop_run("r", caller=BOB) == "run r is finished, not running"


def test_runs_and_tokens_of_an_older_data_dir_are_the_default_projects(data_dir: Path) -> None:
    old = sqlite3.connect(data_dir / "hub.db")
    old.executescript(
        """
        CREATE TABLE runs (run_id TEXT PRIMARY KEY, app TEXT NOT NULL, app_hash TEXT NOT NULL,
            archive TEXT NOT NULL, overrides TEXT NOT NULL, rounds INTEGER NOT NULL,
            seed INTEGER NOT NULL, status TEXT NOT NULL, round INTEGER NOT NULL DEFAULT 0,
            created REAL NOT NULL, detail TEXT NOT NULL DEFAULT '');
        INSERT INTO runs VALUES ('old', 'app', 'h', 'a', '{}', -1, 0, 'stopped', 2, 0.0, '');
        CREATE TABLE join_tokens (id TEXT PRIMARY KEY, secret_sha256 TEXT NOT NULL,
            ca_fingerprint TEXT NOT NULL, created_at REAL NOT NULL, expires_at REAL NOT NULL,
            spent INTEGER NOT NULL DEFAULT 0, spent_at REAL);
        """
    )
    secret = "s" * 43
    old.execute(
        "INSERT INTO join_tokens VALUES ('abcdefghijkl', ?, ?, 0, ?, 0, NULL)",
        (hashlib.sha256(secret.encode()).hexdigest(), "ab" * 32, time.time() + 600),
    )
    old.commit()
    old.close()
    hub = start_hub(data_dir)
    try:
        run = hub.run_info("old")
        assert run is not None and run.project == "default"
        node_id, _ = enrol(hub, f"pln1.abcdefghijkl.{secret}.{'ab' * 16}")
        assert hub.node_projects(node_id) == {"default"}
    finally:
        stop(hub)


# --- revocation -------------------------------------------------------------------------------


def test_revocations_survive_a_restart_and_show_in_listings(data_dir: Path) -> None:
    hub = start_hub(data_dir)
    user = log_in(hub, hub.add_user("alice", Role.VIEWER, ["cardiology"]))
    node_id, node = enrol(hub, hub.create_token(600)[0])
    hub.revoke_user("alice")
    hub.revoke_node(node_id)
    stop(hub)

    hub = start_hub(data_dir)
    try:
        with pytest.raises(SecurityError, match="user alice was revoked by local admin at"):
            hub.check_caller(user)
        with pytest.raises(SecurityError, match=f"node {node_id} was revoked by local admin"):
            hub.check_caller(node)
        with pytest.raises(SecurityError, match=f"renewal refused: node {node_id} was revoked"):
            hub.renew(node_id, make_key_and_csr()[1])
        assert hub.diagnose(node) is not None
        assert [u.name for u in hub.list_users() if u.revoked_at is not None] == ["alice"]
        (listed,) = hub.list_nodes()
        assert (listed.node_id, listed.revoked_by) == (node_id, "local admin")
        assert listed.revoked_at is not None
        with pytest.raises(Exception, match="belonged to a user who was revoked"):
            hub.add_user("alice", Role.VIEWER, ["cardiology"])  # their certificate stays dead
    finally:
        stop(hub)


def test_a_revoked_nodes_tasks_fail_with_the_reason_and_it_gets_no_more(hub: Hub) -> None:
    node_id, _ = enrol(hub, hub.create_token(600)[0])
    hub.heartbeat(node_id, "apphash", {})
    replies: queue.Queue[Message] = queue.Queue()
    taken, queued = fit(node_id, "r1"), fit(node_id, "r2")
    for message in (taken, queued):
        hub.fleet.enqueue(QueuedTask(message, "apphash", {}, replies))
    assert hub.next_task(node_id, 0) is not None  # in flight: taken, not answered

    hub.revoke_node(node_id)
    errors = sorted((r.task_id, r.error) for r in (replies.get_nowait(), replies.get_nowait()))
    assert [task_id for task_id, _ in errors] == ["r1-1", "r2-1"]
    assert all(f"node {node_id} was revoked by local admin at" in e for _, e in errors)
    assert node_id not in hub.fleet.alive()
    hub.heartbeat(node_id, "apphash", {})  # were it to get through: it stays cut off
    assert node_id not in hub.fleet.alive()
    hub.fleet.enqueue(QueuedTask(fit(node_id, "r3"), "apphash", {}, replies))
    assert "was revoked" in (replies.get_nowait().error or "")
    assert hub.next_task(node_id, 0) is None


def test_only_admins_revoke(hub: Hub) -> None:
    node_id, _ = enrol(hub, hub.create_token(600)[0])
    with pytest.raises(Forbidden, match="cannot revoke nodes"):
        hub.revoke_node(node_id, caller=BOB)
    with pytest.raises(Exception, match=r"no node 999: nothing was revoked.\nHint"):
        hub.revoke_node(999)


# --- audit ------------------------------------------------------------------------------------


def test_control_actions_and_refusals_are_audited(hub: Hub) -> None:
    hub.add_user("alice", Role.VIEWER, ["cardiology"], caller=ROOT)
    record_run(hub, "r", "cardiology")
    with pytest.raises(Forbidden):
        hub.stop_run("r", caller=ALICE)
    hub.create_token(600, projects=["cardiology"], uses=3, caller=ROOT)
    rows = hub.audit(caller=ROOT)
    assert [(r.who, r.action, r.project, r.outcome.split(":")[0]) for r in rows[:3]] == [
        ("root", "create join token", "cardiology", "ok"),
        ("alice", "stop runs", "cardiology", "refused"),
        ("root", "add user", "cardiology", "ok"),
    ]
    assert rows[1].outcome == (
        "refused: user alice (viewer in cardiology) cannot stop runs: that needs role member "
        "or admin in project cardiology."
    )
    assert rows[0].time >= rows[1].time >= rows[2].time
    with pytest.raises(Forbidden, match="cannot read the audit"):
        hub.audit(caller=ALICE)


def test_audit_text_is_inert_and_capped(hub: Hub) -> None:
    hub.audit_trail.record("eve\x1b[2J", "stop runs", "p", "run\nforged", "x" * 10_000)
    (row,) = hub.audit(1, caller=LOCAL_ADMIN)
    assert (row.who, row.target) == ("eve\\x1b[2J", "run\\nforged")
    assert len(row.outcome) < 4100 and row.outcome.endswith("[10000 chars]")
