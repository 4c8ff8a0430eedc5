"""Placement at the hub: the fleet keeps each node's latest labels and resources, and a run's
Grid offers the loop only the nodes its selector matches now, every time it asks."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pollinate.app import app_hash
from pollinate.hub import runs as runs_module
from pollinate.hub.archives import pack_app
from pollinate.hub.fleet import Fleet
from pollinate.hub.grid import HubGrid
from pollinate.hub.hub import Hub
from pollinate.hub.journal import Journal
from pollinate.hub.runs import Runs
from pollinate.hub.state import HubState
from pollinate.placement import Placement, SelectorError, parse_selector
from tests.deployment.apps import write_tiny_app
from tests.hub.test_grid import hub_grid

TIMEOUT = 30.0
GPU = {"gpus": "1", "cpus": "4"}
CPU = {"gpus": "0", "cpus": "4"}


@pytest.fixture(autouse=True)
def isolated_imports() -> Iterator[None]:
    """Apps loaded here import ``tiny_app``: leave no trace of it for other tests."""
    modules, path = set(sys.modules), list(sys.path)
    yield
    for name in set(sys.modules) - modules:
        del sys.modules[name]
    sys.path[:] = path


def test_the_fleet_keeps_each_nodes_latest_labels_and_resources() -> None:
    fleet = Fleet()
    fleet.heartbeat(1, "h", {}, labels={"region": "eu"}, resources=GPU)
    assert fleet.labels_and_resources(1) == ({"region": "eu"}, GPU)
    fleet.heartbeat(1, "h", {}, labels={"region": "ch"}, resources=CPU)  # replaced, not merged
    assert fleet.labels_and_resources(1) == ({"region": "ch"}, CPU)
    assert fleet.labels_and_resources(2) == ({}, {})


def test_a_runs_nodes_are_the_alive_nodes_its_selector_matches() -> None:
    fleet = Fleet()
    fleet.heartbeat(1, "h", {}, labels={"region": "eu"}, resources=GPU)
    fleet.heartbeat(2, "h", {}, labels={"region": "us"}, resources=GPU)
    fleet.heartbeat(3, "h", {}, labels={"region": "eu"}, resources=CPU)
    grid = hub_grid(fleet)
    assert grid.nodes() == [1, 2, 3]  # no selector: every node
    grid.placement = Placement(parse_selector("gpus>=1,region in (eu,ch)"))
    assert grid.nodes() == [1]
    grid.placement = Placement(parse_selector("!gpu_model,region notin (us)"))
    assert grid.nodes() == [1, 3]


def test_placement_follows_the_fleet_every_time_the_grid_is_asked() -> None:
    fleet = Fleet()
    fleet.heartbeat(1, "h", {}, resources=GPU)
    fleet.heartbeat(2, "h", {}, resources=CPU)
    grid = hub_grid(fleet)
    grid.placement = Placement(parse_selector("gpus>=1,!draining"))
    assert grid.nodes() == [1]
    fleet.heartbeat(2, "h", {}, resources={"gpus": "2"})  # its next heartbeat: it matches
    assert grid.nodes() == [1, 2]
    fleet.heartbeat(1, "h", {}, labels={"draining": "yes"}, resources=GPU)  # no longer
    assert grid.nodes() == [2]
    assert grid.wait_for_nodes(1, 0.0) == [2]


def test_a_node_presumed_alive_after_a_restart_matches_once_it_says_what_it_has() -> None:
    fleet = Fleet()
    fleet.presume_alive([7])
    grid = hub_grid(fleet)
    assert grid.nodes() == [7]  # an unplaced run takes it, as before
    grid.placement = Placement(parse_selector("gpus>=1"))
    assert grid.nodes() == []
    fleet.heartbeat(7, "h", {}, resources=GPU)
    assert grid.nodes() == [7]


def test_a_runs_placement_is_recorded_with_it_and_kept_when_it_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    grids: list[HubGrid] = []

    class Noted(HubGrid):
        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            grids.append(self)

    monkeypatch.setattr(runs_module, "HubGrid", Noted)
    app = write_tiny_app(tmp_path / "app")
    state = HubState(tmp_path / "hub")
    runs = Runs(state, Fleet(), Journal(state))
    placement = Placement(parse_selector("gpus>=1, region in (eu,ch)"), 2, 3)
    run_id = runs.submit(pack_app(app), app_hash(app), {}, 0, 0, placement)
    runs.join(TIMEOUT)
    assert state.run_selector(run_id) == "gpus>=1,region in (eu,ch)"
    first = state.log_after(run_id, 0)[0].text
    assert first.endswith(
        "on the nodes that match gpus>=1,region in (eu,ch), at least 2 and at most 3 of them "
        "a round"
    )
    state.update_run(run_id, status="running")  # as if the hub died before it noted the end
    state.close()

    state = HubState(tmp_path / "hub")
    runs = Runs(state, Fleet(), Journal(state))
    runs.resume_all()
    runs.join(TIMEOUT)
    assert [(grid.run_id, grid.placement) for grid in grids] == [(run_id, placement)] * 2
    state.close()


def test_a_run_without_a_selector_records_none(tmp_path: Path) -> None:
    app = write_tiny_app(tmp_path / "app")
    state = HubState(tmp_path / "hub")
    runs = Runs(state, Fleet(), Journal(state))
    run_id = runs.submit(pack_app(app), app_hash(app), {}, 0, 0)
    runs.join(TIMEOUT)
    assert state.run_selector(run_id) == ""
    assert "match" not in state.log_after(run_id, 0)[0].text
    state.close()


def test_the_hub_refuses_a_bad_selector_before_it_stores_anything(tmp_path: Path) -> None:
    app = write_tiny_app(tmp_path / "app")
    hub = Hub(tmp_path / "hub")
    try:
        with pytest.raises(SelectorError, match=r"(?s)at character 6.*Hint: "):
            hub.submit_run(pack_app(app), app_hash(app), {}, 0, 0, select="gpus>>1")
        assert hub.state.runs() == []
        assert not (tmp_path / "hub" / "apps").exists() or not any(
            (tmp_path / "hub" / "apps").iterdir()
        )
    finally:
        hub.close()
