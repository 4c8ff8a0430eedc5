"""The deployment commands as a user pastes them: a command waits briefly for a hub that is
starting, a run submitted before its nodes waits for them, a node says what it is doing
without ``-v``, and a run whose every node refuses its tasks fails (exit 1). Real
processes on 127.0.0.1 (tests/deployment/conftest.py)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deployment.apps import write_tiny_app
from tests.deployment.conftest import Deployment, Process, free_ports, open_deployment, wait_for


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    with open_deployment(tmp_path / "deployment") as opened:
        yield opened


def quiet_node(deployment: Deployment, app: Path, partition: int, partitions: int) -> Process:
    """``pollinate node`` as a user starts it: no ``-v``."""
    return deployment.spawn(
        f"node-p{partition}",
        *("node", "--hub", deployment.fleet, "--app", str(app), "--insecure"),
        *("--node-config", f"partition-id={partition}"),
        *("--node-config", f"num-partitions={partitions}"),
    )


def test_a_command_waits_for_a_hub_that_is_starting(deployment: Deployment) -> None:
    ports = iter(free_ports(3))  # every address the hub serves, chosen before it starts
    for name in ("fleet", "metrics", "dashboard"):
        setattr(deployment, name, f"127.0.0.1:{next(ports)}")
    deployment.control = deployment.fleet  # one address for nodes and users
    listing = deployment.spawn("ls", "ls", "--hub", deployment.control)
    wait_for(lambda: "waiting up to 10s for the hub" in listing.stderr, "ls to say it waits")
    deployment.restart_hub()  # the hub starts only now
    assert listing.popen.wait(timeout=60) == 0, listing.stderr
    assert "run" in listing.stdout and "status" in listing.stdout


def test_a_run_submitted_before_its_nodes_waits_for_them_and_nodes_say_what_they_do(
    deployment: Deployment, tmp_path: Path
) -> None:
    app = write_tiny_app(tmp_path / "app", **{"num-rounds": 2})
    deployment.start_hub()
    first = quiet_node(deployment, app, 0, 2)
    wait_for(lambda: "connected as node" in first.stderr, "the first node to connect")
    run = deployment.start_run(app)  # FedAvg needs two nodes; one is there
    wait_for(lambda: "waiting up to" in run.process.stdout, "the run to say it waits for nodes")
    second = quiet_node(deployment, app, 1, 2)
    result = run.finish()
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.history is not None and [r["replies"] for r in result.history[1:]] == [2, 2]
    lines = first.stderr.splitlines()
    for expected in ("connected as node", f"serving run {result.run_id}", "round 1", "round 2"):
        assert any(expected in line for line in lines), (expected, first.stderr)
    assert sum(f"run {result.run_id} round 1" in line for line in lines) == 1  # once a round
    assert "serving run" in second.stderr
    deployment.processes[0].kill()  # the hub
    wait_for(lambda: "unavailable; reconnecting" in first.stderr, "the node to say it lost it")


def test_a_run_whose_nodes_all_refuse_its_app_version_fails(
    deployment: Deployment, tmp_path: Path
) -> None:
    app = write_tiny_app(tmp_path / "app", **{"num-rounds": 2})
    edited = shutil.copytree(app, tmp_path / "edited")
    client = edited / "tiny_app" / "client.py"
    client.write_text(client.read_text() + "# edited at this site only\n")
    deployment.start_hub()
    deployment.start_nodes([edited, edited])
    result = deployment.run(app)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "2 x fit: client failed: node" in result.stdout
    assert "refuses the task: the run needs app" in result.stdout
    assert "no round of 2 was applied" in result.stderr
    assert result.history is not None and len(result.history) == 3
