"""Placement decided at the hub: labels an admin sets, cordons, what nodes reported, node
counts, and the states the inventory shows. Real Hubs on real SQLite in tmp_path; the fleet's
clock is virtual where heartbeat ages matter."""

from __future__ import annotations

import queue
import sqlite3
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pollinate.app import app_hash
from pollinate.errors import PollinateError
from pollinate.hub.access import Caller, Forbidden, Role
from pollinate.hub.archives import pack_app
from pollinate.hub.credentials import HubCredentials
from pollinate.hub.fleet import QueuedTask
from pollinate.hub.grid import HubGrid
from pollinate.hub.hub import Hub
from pollinate.hub.inventory import NodeState, inventory
from pollinate.hub.placement import REPORT_WRITES
from pollinate.hub.state import LabelSource
from pollinate.placement import Placement, PlacementError, parse_selector
from pollinate.records import Arrays, Message
from pollinate.security import make_key_and_csr
from tests.deployment.apps import write_tiny_app
from tests.hub.conftest import Clock

GPU = {"gpus": "1"}
BOB = Caller("bob", Role.MEMBER, frozenset({"default"}))


def stop(hub: Hub) -> None:
    hub.close()
    hub.state.close()


def named(hub: Hub, *names: str) -> list[int]:
    """Nodes as an insecure hub names them, each with a first heartbeat (no labels)."""
    ids = [hub.node_id_for_name(name) for name in names]
    for node_id in ids:
        hub.heartbeat(node_id, "h", {})
    return ids


def grid(hub: Hub, select: str = "", min_nodes: int = 0, max_nodes: int = 0) -> HubGrid:
    placement = Placement(parse_selector(select), min_nodes, max_nodes)
    return HubGrid(hub.fleet, hub.journal, "run", "h", {}, placement)


def fit(node_id: int) -> Message:
    arrays = Arrays({"w": np.zeros(2)})
    return Message(
        "fit", task_id=f"r:1:fit:{node_id}", run_id="r", round=1, node_id=node_id, arrays=arrays
    )


# --- labels from the hub ----------------------------------------------------------------------


def test_labels_from_the_hub_override_the_nodes_own_and_it_joins_the_next_placement(
    hub: Hub,
) -> None:
    (node,) = named(hub, "berlin")
    hub.heartbeat(node, "h", {}, labels={"region": "us", "site": "berlin"}, resources=GPU)
    eu = grid(hub, "region=eu, gpus>=1")
    assert eu.nodes() == []
    labels = hub.label_node(node, {"region": "eu", "tier": "a"}, [])
    assert labels == {"region": "eu", "site": "berlin", "tier": "a"}
    assert eu.nodes() == [node]  # the run's next look at the fleet takes it
    # the node's own heartbeat does not undo the hub's label
    hub.heartbeat(node, "h", {}, labels={"region": "us", "site": "berlin"}, resources=GPU)
    assert eu.nodes() == [node]
    (entry,) = inventory(hub)
    assert entry.labels == labels
    # removing the hub's label shows the node's own again
    assert hub.label_node(node, {}, ["region"]) == {"region": "us", "site": "berlin", "tier": "a"}
    assert eu.nodes() == []


def test_labels_from_the_hub_and_what_nodes_reported_survive_a_restart(tmp_path: Path) -> None:
    hub = Hub(tmp_path / "hub")
    gpu, cpu = named(hub, "gpu", "cpu")
    hub.heartbeat(gpu, "h", {}, labels={"site": "berlin"}, resources=GPU)
    hub.heartbeat(cpu, "h", {}, labels={"site": "paris"}, resources={"gpus": "0"})
    hub.label_node(cpu, {"region": "eu"}, [])
    stop(hub)

    hub = Hub(tmp_path / "hub")
    try:
        # presumed alive, not heard yet: placed on what they reported to the last hub
        assert grid(hub, "gpus>=1").nodes() == [gpu]
        assert grid(hub, "region=eu").nodes() == [cpu]
        assert hub.fleet.labels_and_resources(cpu) == (
            {"site": "paris", "region": "eu"},
            {"gpus": "0"},
        )
        hub.heartbeat(gpu, "h", {}, labels={"site": "berlin"}, resources={"gpus": "0"})
        assert grid(hub, "gpus>=1").nodes() == []  # its heartbeat has the last word
    finally:
        stop(hub)


def test_what_a_node_reports_is_written_when_it_changes_and_not_too_often(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    hub.placement._writes._clock = clock.monotonic
    (node,) = named(hub, "n")  # its first heartbeat: one write
    writes: list[object] = []
    original = hub.state.set_node_labels

    def counted(node_id: int, by_source: Any) -> None:
        writes.append(by_source)
        original(node_id, by_source)

    monkeypatch.setattr(hub.state, "set_node_labels", counted)
    for _ in range(5):
        hub.heartbeat(node, "h", {}, labels={"a": "1"}, resources=GPU)
    assert len(writes) == 1  # labels and resources, once
    for n in range(10):  # a node that changes them at every heartbeat
        hub.heartbeat(node, "h", {}, labels={"a": str(n)}, resources=GPU)
    assert len(writes) == REPORT_WRITES - 1  # its bucket is empty
    clock.advance(60)
    hub.heartbeat(node, "h", {}, labels={"a": "9"}, resources=GPU)
    assert len(writes) == REPORT_WRITES
    kept = hub.state.node_labels()[node]
    assert (kept[LabelSource.NODE], kept[LabelSource.RESOURCES]) == ({"a": "9"}, GPU)


def test_labels_from_the_hub_are_checked_before_anything_changes(hub: Hub) -> None:
    (node,) = named(hub, "n")
    with pytest.raises(PlacementError, match=r"(?s)key 'my region' holds ' '.*Hint: "):
        hub.label_node(node, {"my region": "eu"}, [])
    with pytest.raises(PlacementError, match="both set and removed"):
        hub.label_node(node, {"region": "eu"}, ["region"])
    with pytest.raises(PlacementError, match="value '' holds nothing"):
        hub.label_node(node, {"region": ""}, [])
    with pytest.raises(TypeError, match="Hint: "):
        hub.label_node(node, {"gpus": 2}, [])  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="remove must be a list of keys"):
        hub.label_node(node, {}, "region")  # type: ignore[arg-type]
    with pytest.raises(PlacementError, match="over the limit of 64"):
        hub.label_node(node, {f"k{i}": "v" for i in range(65)}, [])
    with pytest.raises(PollinateError, match="no node 99: nothing was labelled"):
        hub.label_node(99, {"region": "eu"}, [])
    assert hub.fleet.hub_labels(node) == {}
    assert hub.state.node_labels().get(node, {}).get("hub") is None


def test_only_admins_label_and_cordon_and_each_change_is_audited(hub: Hub) -> None:
    (node,) = named(hub, "n")
    with pytest.raises(Forbidden, match="cannot manage nodes: that needs role admin"):
        hub.label_node(node, {"region": "eu"}, [], caller=BOB)
    with pytest.raises(Forbidden, match="cannot manage nodes"):
        hub.cordon_node(node, True, caller=BOB)
    assert hub.fleet.hub_labels(node) == {} and not hub.fleet.cordoned(node)
    hub.label_node(node, {"region": "eu"}, ["draining"])
    hub.cordon_node(node, True)
    hub.cordon_node(node, False)
    rows = [(r.who, r.action, r.target, r.outcome.split(":")[0]) for r in hub.audit(10)]
    assert rows == [
        ("local admin", "uncordon node", f"node {node}", "ok"),
        ("local admin", "cordon node", f"node {node}", "ok"),
        ("local admin", "label node", f"node {node}: region=eu -draining", "ok"),
        ("bob", "manage nodes", f"node {node}", "refused"),
        ("bob", "manage nodes", f"node {node}", "refused"),
    ]


# --- cordon -----------------------------------------------------------------------------------


def test_a_cordoned_node_gets_no_new_placements_but_answers_what_it_holds(hub: Hub) -> None:
    first, second = named(hub, "a", "b")
    run = grid(hub)
    assert run.nodes() == [first, second]
    replies: queue.Queue[Message] = queue.Queue()
    task = QueuedTask(fit(first), "h", {}, replies)
    hub.journal.open([task.message])  # as the run's grid does, before it queues the task
    hub.fleet.enqueue(task)
    hub.cordon_node(first, True)
    assert run.nodes() == [second]  # not placed on again
    taken = hub.next_task(first, 0)  # but what was queued for it is still its to answer
    assert taken is task
    hub.accept_reply(first, task.message.reply(arrays=task.message.arrays, num_examples=1))
    assert replies.get_nowait().error is None
    with pytest.raises(PollinateError, match="no node 99: nothing was cordoned"):
        hub.cordon_node(99, True)
    hub.cordon_node(first, False)
    assert run.nodes() == [first, second]


def test_a_cordon_survives_a_restart(tmp_path: Path) -> None:
    hub = Hub(tmp_path / "hub")
    first, second = named(hub, "a", "b")
    hub.cordon_node(second, True)
    stop(hub)

    hub = Hub(tmp_path / "hub")
    try:
        assert grid(hub).nodes() == [first]
        assert [e.state for e in inventory(hub)] == [NodeState.ONLINE, NodeState.CORDONED]
    finally:
        stop(hub)


# --- node counts ------------------------------------------------------------------------------


def test_a_run_sees_no_nodes_until_min_nodes_match_and_at_most_max_nodes(hub: Hub) -> None:
    ids = named(hub, "a", "b", "c", "d")
    for node_id in ids[:2]:
        hub.heartbeat(node_id, "h", {}, resources=GPU)
    run = grid(hub, "gpus>=1", min_nodes=3, max_nodes=3)
    assert run.nodes() == []
    assert run.wait_for_nodes(1, 0.0) == []  # the round would wait for the third
    for node_id in ids[2:]:
        hub.heartbeat(node_id, "h", {}, resources=GPU)
    assert run.nodes() == ids[:3]  # four match; three of them, the lowest ids
    assert run.wait_for_nodes(1, 0.0) == ids[:3]


def test_the_hub_refuses_bad_node_counts_before_it_stores_anything(
    hub: Hub, tmp_path: Path
) -> None:
    app = write_tiny_app(tmp_path / "app")
    archive, digest = pack_app(app), app_hash(app)
    with pytest.raises(PlacementError, match=r"(?s)max_nodes=2 is below min_nodes=3.*Hint: "):
        hub.submit_run(archive, digest, {}, 1, 0, min_nodes=3, max_nodes=2)
    with pytest.raises(PlacementError, match=r"(?s)min_nodes=-1 is out of range.*Hint: "):
        hub.submit_run(archive, digest, {}, 1, 0, min_nodes=-1)
    with pytest.raises(PlacementError, match="max_nodes must be an int"):
        hub.submit_run(archive, digest, {}, 1, 0, max_nodes=True)
    assert hub.state.runs() == []


# --- the inventory ----------------------------------------------------------------------------


def test_the_inventory_shows_each_nodes_state(tmp_path: Path, clock: Clock) -> None:
    hub = Hub(tmp_path / "hub", heartbeat_timeout=30, heartbeat_interval=5)
    try:
        online, stale, offline, cordoned, revoked = named(hub, "a", "b", "c", "d", "e")
        hub.cordon_node(cordoned, True)
        hub.revoke_node(revoked)
        clock.advance(11)  # over two heartbeat intervals for all
        hub.heartbeat(online, "h", {})
        assert {e.node_id: e.state for e in inventory(hub)}[stale] is NodeState.STALE
        clock.advance(20)  # over the timeout for all but the one heard 20 s ago
        hub.heartbeat(online, "h", {})
        hub.heartbeat(stale, "h", {})
        clock.advance(11)
        hub.heartbeat(online, "h", {})
        states = {e.node_id: e.state for e in inventory(hub)}
        assert states == {
            online: NodeState.ONLINE,
            stale: NodeState.STALE,
            offline: NodeState.OFFLINE,
            cordoned: NodeState.CORDONED,
            revoked: NodeState.REVOKED,
        }
        assert all(e.cert_expires is None for e in inventory(hub))  # insecure: no certificates
    finally:
        stop(hub)


def test_the_inventory_shows_when_each_nodes_certificate_expires(tmp_path: Path) -> None:
    data_dir = tmp_path / "hub"
    data_dir.mkdir()
    credentials = HubCredentials.load_or_create(data_dir, ["localhost"], ["127.0.0.1"], 3600)
    hub = Hub(data_dir, credentials=credentials)
    try:
        token = hub.create_token(600)[0]
        _, _, node_id = hub.enrol(token, make_key_and_csr()[1], "ipv4:192.0.2.7:1")
        (entry,) = inventory(hub)
        assert entry.cert_expires == pytest.approx(time.time() + 3600, abs=120)
        credentials.cert_lifetime = 7200
        hub.renew(node_id, make_key_and_csr()[1])
        (entry,) = inventory(hub)
        assert entry.cert_expires == pytest.approx(time.time() + 7200, abs=120)
    finally:
        stop(hub)


def test_a_data_dir_of_a_hub_before_placement_at_the_hub_still_serves(tmp_path: Path) -> None:
    app = write_tiny_app(tmp_path / "app")
    hub = Hub(tmp_path / "hub")
    (node,) = named(hub, "n")
    run_id = hub.submit_run(pack_app(app), app_hash(app), {}, 1, 0, select="gpus>=1")
    hub.stop_run(run_id)  # it waits for a GPU node, which never comes
    hub.runs.join(30)
    stop(hub)
    with sqlite3.connect(tmp_path / "hub" / "hub.db") as db:  # as an older hub left it
        for table in ("node_labels", "cordoned_nodes", "node_certificates", "run_node_counts"):
            db.execute(f"DROP TABLE {table}")
    db.close()

    hub = Hub(tmp_path / "hub")
    try:
        assert hub.state.run_placement(run_id) == Placement(parse_selector("gpus>=1"))
        ((entry),) = inventory(hub)
        assert (entry.node_id, entry.state, entry.cert_expires) == (node, NodeState.ONLINE, None)
        hub.cordon_node(node, True)
        assert hub.label_node(node, {"region": "eu"}, []) == {"region": "eu"}
    finally:
        stop(hub)
