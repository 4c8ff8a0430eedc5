"""Placement at the command line: a bad label or selector is told at once, with the fix,
before any hub is looked for; ``pollinate nodes`` shows the fleet as placement sees it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from pollinate.hub.hub import Hub
from pollinate.transport.client import ControlClient, FleetClient, HubRefused
from pollinate.transport.ports import HubPorts, serve
from tests.cli_runner import pollinate
from tests.deployment.apps import write_tiny_app

NOWHERE = "127.0.0.1:1"  # nothing listens: a command that looked for it would wait


def test_a_bad_label_or_resource_is_refused_with_the_fix(tmp_path: Path) -> None:
    app = write_tiny_app(tmp_path / "app")
    node = ("node", "--hub", NOWHERE, "--app", app, "--insecure")
    done = pollinate(*node, "--label", "my region=eu", timeout=60)
    assert done.returncode == 2, done.stderr
    assert "--label 'my region=eu': key 'my region' holds ' '" in done.stderr
    assert "Hint: --label region=eu" in done.stderr
    done = pollinate(*node, "--resources", "gpus", timeout=60)
    assert done.returncode == 2, done.stderr
    assert "--resources 'gpus': has no '='" in done.stderr and "--resources gpus=2" in done.stderr


def test_a_bad_selector_is_refused_before_the_hub_is_looked_for(tmp_path: Path) -> None:
    app = write_tiny_app(tmp_path / "app")
    done = pollinate("run", app, "--hub", NOWHERE, "--select", "gpus>=x", timeout=60)
    assert done.returncode == 2, done.stderr
    assert "'>=' compares numbers, got 'x' at character 7" in done.stderr
    assert "Hint: write a number after '>='" in done.stderr
    assert "waiting" not in done.stderr + done.stdout


def test_a_selector_without_a_hub_is_refused(tmp_path: Path) -> None:
    app = write_tiny_app(tmp_path / "app")
    done = pollinate("run", app, "--select", "gpus>=1", timeout=60)
    assert done.returncode == 2, done.stderr
    assert "--select places a run on a hub's nodes" in done.stderr
    assert "Hint: pollinate run APP --hub" in done.stderr


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[tuple[Hub, HubPorts]]:
    hub = Hub(tmp_path / "hub")
    servers = serve(hub, "127.0.0.1:0")
    yield hub, servers
    servers.stop(0)
    hub.close()


def test_nodes_shows_each_nodes_labels_resources_and_state(hub: tuple[Hub, HubPorts]) -> None:
    the_hub, ports = hub
    nodes = [
        ("berlin", {"region": "eu"}, {"gpus": "1", "cpus": "8", "python": "3.11.4"}),
        ("ohio", {"region": "us", "draining": "yes"}, {"gpus": "0", "cpus": "2"}),
        ("zurich", {"region": "ch"}, {"gpus": "2"}),
    ]
    for name, labels, resources in nodes:
        client = FleetClient(f"127.0.0.1:{ports.port}")
        try:
            client.heartbeat("", {}, name=name, labels=labels, resources=resources)
        finally:
            client.close()
    zurich = the_hub.node_id_for_name("zurich")
    the_hub.revoke_node(zurich)
    control = f"127.0.0.1:{ports.port}"

    done = pollinate("nodes", "--hub", control, "--json", timeout=60)
    assert done.returncode == 0, done.stderr
    listed = json.loads(done.stdout)
    assert [(n["name"], n["state"], n["labels"], n["resources"]) for n in listed] == [
        ("berlin", "online", nodes[0][1], nodes[0][2]),
        ("ohio", "online", nodes[1][1], nodes[1][2]),
        ("zurich", "revoked", nodes[2][1], nodes[2][2]),
    ]
    assert all(n["projects"] == ["default"] and n["runs"] == [] for n in listed)
    # a revoked node was cut off: the hub no longer counts it as heard from
    assert [n["heartbeat_age"] is None for n in listed] == [False, False, True]

    done = pollinate("nodes", "--hub", control, "--json", "--select", "gpus>=1", timeout=60)
    assert [n["name"] for n in json.loads(done.stdout)] == ["berlin", "zurich"]
    done = pollinate("nodes", "--hub", control, "--select", "!draining,cpus>=4", timeout=60)
    assert done.returncode == 0, done.stderr
    assert "berlin" in done.stdout and "ohio" not in done.stdout and "zurich" not in done.stdout
    assert "region=eu" in done.stdout and "cpus=8 gpus=1" in done.stdout
    assert "python" not in done.stdout  # the table shows the main resources, --json them all


def test_the_hub_refuses_a_bad_selector_for_nodes(hub: tuple[Hub, HubPorts]) -> None:
    client = ControlClient(f"127.0.0.1:{hub[1].port}")
    try:
        with pytest.raises(HubRefused, match="expected '\\(' after 'in'"):
            client.list_nodes("region in eu")
    finally:
        client.close()
