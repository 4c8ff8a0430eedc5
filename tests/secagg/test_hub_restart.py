"""A hub that crashes in the middle of a secure round, over mutual TLS, comes back and finishes
it: the recorded stages are handed back, nodes answer a stage asked again with the same
answer, and no node trains twice."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pollinate.app import app_hash
from pollinate.hub.archives import pack_app
from pollinate.hub.credentials import HubCredentials
from pollinate.hub.hub import Hub
from pollinate.node.agent import NodeAgent
from pollinate.transport.client import enrol
from pollinate.transport.ports import HubPorts, serve
from tests.deployment.apps import write_tiny_app
from tests.deployment.conftest import free_ports

ROUNDS = 3
# each round, partition p moves the model by p + 1 with p + 1 examples: mean 14 / 6
STEP = (1 * 1 + 2 * 2 + 3 * 3) / (1 + 2 + 3)


class Running:
    """A TLS hub on fixed ports and data dir, so a second one can take over after a crash."""

    def __init__(self, data: Path, ports: list[int]) -> None:
        self.data, self.ports = data, ports
        self.hub: Hub | None = None
        self.servers: HubPorts | None = None

    def start(self) -> Hub:
        credentials = HubCredentials.load_or_create(self.data, ["localhost"], ["127.0.0.1"], 3600)
        self.hub = Hub(self.data, credentials=credentials, heartbeat_timeout=30)
        self.servers = serve(self.hub, f"127.0.0.1:{self.ports[0]}")
        self.hub.start()
        return self.hub

    def crash(self) -> None:
        assert self.hub is not None and self.servers is not None
        self.servers.stop(0)
        self.hub.close()
        self.hub.state.close()


def test_a_secure_round_survives_a_hub_crash(tmp_path: Path) -> None:
    markers, gates = tmp_path / "markers", tmp_path / "gates"
    markers.mkdir(), gates.mkdir()
    config = {"num-rounds": ROUNDS, "marker-dir": str(markers), "gate-dir": str(gates)}
    app = write_tiny_app(tmp_path / "app", **config, **{"secure-aggregation": True})
    running = Running(tmp_path / "hub", free_ports(1))
    hub = running.start()
    fleet = enrolment = f"127.0.0.1:{running.ports[0]}"
    agents = []
    for partition in range(3):
        credentials = enrol(enrolment, hub.create_token(60)[0])
        node_config = {"partition-id": str(partition), "num-partitions": "3"}
        agents.append(NodeAgent(fleet, app, node_config, credentials=credentials))
    threads = [threading.Thread(target=a.run, daemon=True) for a in agents]
    try:
        for thread in threads:
            thread.start()
        _wait(lambda: len(hub.fleet.alive()) == 3)
        (gates / "r1").touch()
        run_id = hub.submit_run(pack_app(app), app_hash(app), {}, ROUNDS, 0)
        # round 2 is in its mask stage once every node has started its fit
        _wait(lambda: all((markers / f"fit-p{p}-r2").exists() for p in range(3)))
        running.crash()
        hub = running.start()
        (gates / "r2").touch()
        (gates / "r3").touch()
        _wait(lambda: hub.run_info(run_id).status != "running", timeout=120)
        info = hub.run_info(run_id)
        log = hub.state.log_after(run_id, 0)
    finally:
        for agent in agents:
            agent.stop.set()
        running.crash()
    assert info.status == "finished", info.detail
    assert any("resumes after round 1" in line.text for line in log)
    rounds = [json.loads(line.text) for line in log if line.kind == "round"]
    assert [r["round"] for r in rounds] == list(range(ROUNDS + 1))
    assert all(r["replies"] == 3 and r["applied"] and r["aborted"] is None for r in rounds[1:])
    for r, record in enumerate(rounds):  # centralized evaluation: the sum of the 4 weights
        assert record["centralized"]["loss"] == pytest.approx(4 * STEP * r, abs=1e-3)
    for p in range(3):  # the fit of round 2 was not run again by the nodes
        assert (markers / f"fit-p{p}-r2").read_text() == "fit\n"


def _wait(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)
