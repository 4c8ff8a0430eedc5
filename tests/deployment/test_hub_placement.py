"""Placement decided at the hub, with real node processes: a node labelled from the hub joins a
run at its next round, a cordoned node leaves after its current task, and two runs sharing
three nodes both progress.

The hub runs in the test's process (its admins' calls, ``Hub.label_node`` and
``Hub.cordon_node``, are made on it directly); the nodes are ``pollinate node`` processes
dialling its one address. Rounds are paced by the tiny app's gate files, never by sleeps.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pollinate.app import app_hash
from pollinate.hub.archives import pack_app
from pollinate.hub.hub import Hub
from pollinate.hub.inventory import NodeState, inventory
from pollinate.hub.state import RunStatus
from pollinate.transport.ports import serve
from tests.deployment.apps import write_tiny_app
from tests.deployment.conftest import RUN_TIMEOUT, Deployment, Node, wait_for

pytestmark = pytest.mark.slow


class LiveHub:
    """A hub in this process, serving at ``address``; nodes are ``deployment``'s processes."""

    def __init__(self, directory: Path, deployment: Deployment) -> None:
        self.hub = Hub(directory / "hub", heartbeat_interval=1.0)
        self.ports = serve(self.hub, "127.0.0.1:0")
        self.address = f"127.0.0.1:{self.ports.port}"
        self.deployment = deployment

    def node(self, app: Path, partition: int, *args: str) -> Node:
        return self.deployment.start_node(app, partition, 3, hub=self.address, args=args)

    def submit(self, app: Path, select: str = "", **overrides: str) -> str:
        return self.hub.submit_run(pack_app(app), app_hash(app), overrides, None, 0, select=select)

    def finished(self, run_id: str) -> None:
        def ended() -> bool:
            row = self.hub.run_info(run_id)
            return row is not None and row.status is not RunStatus.RUNNING

        wait_for(ended, f"run {run_id} to end", RUN_TIMEOUT)
        row = self.hub.run_info(run_id)
        assert row is not None and row.status is RunStatus.FINISHED, row

    def rounds(self, run_id: str) -> list[dict[str, Any]]:
        """The run's round records (round 0, the initial evaluation, first)."""
        rows = self.hub.state.log_after(run_id, 0)
        return [json.loads(row.text) | {"time": row.time} for row in rows if row.kind == "round"]

    def close(self) -> None:
        self.ports.stop(0)
        self.hub.close()
        self.hub.state.close()


@pytest.fixture
def live(tmp_path: Path, deployment: Deployment) -> Iterator[LiveHub]:
    hub = LiveHub(tmp_path, deployment)
    try:
        yield hub
    finally:
        deployment.close()  # the nodes first: none dials a hub that is gone
        hub.close()


def fitted(markers: Path, partition: int, rnd: int) -> bool:
    return (markers / f"fit-p{partition}-r{rnd}").exists()


def paced_app(tmp_path: Path) -> tuple[Path, Path, Path]:
    markers, gate = tmp_path / "markers", tmp_path / "gate"
    markers.mkdir()
    gate.mkdir()
    app = write_tiny_app(
        tmp_path / "app", **{"num-rounds": 3, "marker-dir": str(markers), "gate-dir": str(gate)}
    )
    return app, markers, gate


def test_a_node_labelled_from_the_hub_mid_run_joins_at_the_next_round(
    live: LiveHub, tmp_path: Path
) -> None:
    app, markers, gate = paced_app(tmp_path)
    for partition in (0, 1):
        live.node(app, partition, "--label", "region=eu")
    late = live.node(app, 2, "--label", "region=us")
    run_id = live.submit(app, select="region=eu")

    wait_for(lambda: fitted(markers, 0, 1) and fitted(markers, 1, 1), "round 1's fits")
    assert live.hub.label_node(late.node_id, {"region": "eu"}, []) == {"region": "eu"}
    (gate / "r1").touch()  # round 1 ends; round 2 samples the fleet as it is now
    wait_for(lambda: fitted(markers, 2, 2), "the node labelled from the hub to fit in round 2")
    (gate / "r2").touch()
    (gate / "r3").touch()
    live.finished(run_id)

    assert [r["replies"] for r in live.rounds(run_id)[1:]] == [2, 3, 3]
    assert not fitted(markers, 2, 1)


def test_a_cordoned_node_leaves_after_its_current_task(live: LiveHub, tmp_path: Path) -> None:
    app, markers, gate = paced_app(tmp_path)
    nodes = [live.node(app, partition) for partition in (0, 1, 2)]
    run_id = live.submit(app)

    wait_for(lambda: all(fitted(markers, p, 1) for p in (0, 1, 2)), "round 1's fits")
    live.hub.cordon_node(nodes[2].node_id, True)  # its round-1 fit waits at the gate now
    states = {entry.node_id: entry.state for entry in inventory(live.hub)}
    assert states[nodes[2].node_id] is NodeState.CORDONED
    for rnd in (1, 2, 3):
        (gate / f"r{rnd}").touch()
    live.finished(run_id)

    # its current task finished and counted; it was asked nothing after
    assert [r["replies"] for r in live.rounds(run_id)[1:]] == [3, 2, 2]
    assert [fitted(markers, 2, rnd) for rnd in (1, 2, 3)] == [True, False, False]
    assert nodes[2].process.alive()  # cordoned, not cut off


def test_two_runs_sharing_three_nodes_both_progress(live: LiveHub, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    gate.mkdir()
    app = write_tiny_app(
        tmp_path / "app", **{"num-rounds": 4, "fit-seconds": 0.05, "gate-dir": str(gate)}
    )
    nodes = [live.node(app, partition) for partition in (0, 1, 2)]
    marker_dirs = {name: tmp_path / f"markers-{name}" for name in ("a", "b")}
    runs = []
    for markers in marker_dirs.values():
        markers.mkdir()
        runs.append(live.submit(app, **{"marker-dir": str(markers)}))
    # both started (the first's round-1 fits wait at the gate): from here they compete
    wait_for(lambda: all(live.rounds(run_id) for run_id in runs), "both runs to start")
    for rnd in (1, 2, 3, 4):
        (gate / f"r{rnd}").touch()
    for run_id in runs:
        live.finished(run_id)

    # each run had every node in every round: nodes' task counts equal, per run and in all
    counts = {
        (name, p): sum(len(path.read_text().splitlines()) for path in markers.glob(f"fit-p{p}-r*"))
        for name, markers in marker_dirs.items()
        for p in (0, 1, 2)
    }
    assert set(counts.values()) == {4}, counts
    # and they progressed together: neither waited for the other to end before its rounds
    first, second = (live.rounds(run_id) for run_id in runs)
    assert [len(r) for r in (first, second)] == [5, 5]
    assert second[1]["time"] < first[-1]["time"] and first[1]["time"] < second[-1]["time"]
    assert all(node.process.alive() for node in nodes)
