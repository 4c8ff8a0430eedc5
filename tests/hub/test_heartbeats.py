"""A steady node's heartbeat is noted in memory, on the event loop; anything the hub must
write (an arrival, a restart, a new report) goes through ``Hub.heartbeat``, off the loop.

``Hub.heartbeat_in_memory`` says which: True once noted (nothing to write), False having
noted nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import pytest

from pollinate.hub.hub import Hub
from pollinate.hub.state import LabelSource
from pollinate.transport.client import FleetClient
from pollinate.transport.ports import serve

GPU = {"gpus": "1"}


def beat(hub: Hub, node_id: int, session: str = "s1", **report: dict[str, str]) -> bool:
    labels, resources = report.get("labels", {}), report.get("resources", GPU)
    return hub.heartbeat_in_memory(node_id, "apphash", {}, session, labels, resources)


def test_a_steady_nodes_heartbeat_is_noted_in_memory_and_an_arrival_is_not(hub: Hub) -> None:
    node = hub.node_id_for_name("alice")
    assert not beat(hub, node)  # an arrival: hub.db must note it
    assert node not in hub.fleet.alive()
    hub.heartbeat(node, "apphash", {}, "s1", {}, GPU)
    assert beat(hub, node)
    assert hub.fleet.alive() == [node]


def test_a_restart_a_new_report_and_a_cut_off_node_go_through_the_hub(hub: Hub) -> None:
    node = hub.node_id_for_name("alice")
    hub.heartbeat(node, "apphash", {}, "s1", {}, GPU)
    assert not beat(hub, node, session="s2")  # a new process: the log says it restarted
    assert not beat(hub, node, labels={"region": "eu"})  # kept in hub.db first
    hub.heartbeat(node, "apphash", {}, "s1", {"region": "eu"}, GPU)
    assert beat(hub, node, labels={"region": "eu"})
    hub.fleet.cut_off(node, "revoked")
    assert not beat(hub, node, labels={"region": "eu"})
    assert hub.fleet.alive() == []


def test_over_the_wire_a_new_report_is_kept_and_a_steady_one_keeps_the_node_alive(
    hub: Hub,
) -> None:
    servers = serve(hub, "127.0.0.1:0")
    client = FleetClient(f"127.0.0.1:{servers.port}")
    try:
        for region in ("eu", "eu", "us", "us", "us"):
            client.heartbeat("apphash", {}, name="alice", session="s", labels={"region": region})
            kept = hub.state.node_labels()[client.node_id][LabelSource.NODE]
            assert kept == {"region": region}  # written before the heartbeat was answered
        assert hub.fleet.alive() == [client.node_id]
        assert hub.fleet.labels_and_resources(client.node_id)[0] == {"region": "us"}
    finally:
        client.close()
        servers.stop(0)


def test_nodes_arriving_together_are_noted_in_one_transaction(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each arrival is in hub.db before its heartbeat returns (a restarted hub expects the
    node back), and arrivals that wait for the disk meanwhile share the next transaction."""
    nodes = [hub.node_id_for_name(f"node-{i}") for i in range(8)]
    commits: list[list[int]] = []
    first_commit, go_on = threading.Event(), threading.Event()
    mark_alive = hub.state.mark_alive

    def slow_mark_alive(node_ids: Sequence[int]) -> None:
        commits.append(list(node_ids))
        first_commit.set()
        go_on.wait(30)  # the disk is slow: the others arrive meanwhile
        mark_alive(node_ids)

    monkeypatch.setattr(hub.state, "mark_alive", slow_mark_alive)
    threads = [
        threading.Thread(target=hub.heartbeat, args=(node, "apphash", {}, "s1", {}, GPU))
        for node in nodes
    ]
    threads[0].start()
    assert first_commit.wait(30)
    for thread in threads[1:]:
        thread.start()
    deadline = time.monotonic() + 30
    while len(hub._note_arrival._waiting) < len(nodes) - 1:  # all wait behind the first
        assert time.monotonic() < deadline, "the arrivals never queued"
        time.sleep(0.001)
    go_on.set()
    for thread in threads:
        thread.join(30)
    assert len(commits) == 2 and commits[0] == [nodes[0]]
    assert sorted(commits[1]) == sorted(nodes[1:])
    assert sorted(hub.state.alive_at_last_note(60)) == sorted(nodes)
