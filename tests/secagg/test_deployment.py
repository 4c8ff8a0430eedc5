"""Secure aggregation on a real hub over mutual TLS: nodes sign their keys with their
certificates, check their peers' against the fleet CA, and the hub sums masked updates."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np

from pollinate.app import app_hash, load_app
from pollinate.hub.archives import pack_app
from pollinate.node.agent import NodeAgent
from pollinate.secagg import SecAggConfig
from pollinate.simulation import run_simulation
from pollinate.transport.client import enrol
from tests.transport.test_tls import start_hub

DEMO = Path(__file__).resolve().parents[2] / "examples" / "quickstart-numpy"
ROUNDS = 3


def test_three_enrolled_nodes_train_the_demo_with_secure_aggregation(tmp_path: Path) -> None:
    running = start_hub(tmp_path / "hub")
    agents = []
    for partition in range(3):
        credentials = enrol(running.enrol, running.token())
        config = {"partition-id": str(partition), "num-partitions": "3"}
        agents.append(NodeAgent(running.fleet, DEMO, config, credentials=credentials))
    threads = [threading.Thread(target=a.run, daemon=True) for a in agents]
    try:
        for t in threads:
            t.start()
        _wait(lambda: len(running.hub.fleet.alive()) == 3)
        overrides = {"secure-aggregation": "true"}
        run_id = running.hub.submit_run(pack_app(DEMO), app_hash(DEMO), overrides, ROUNDS, 0)
        _wait(lambda: running.hub.run_info(run_id).status != "running", timeout=180)
        info = running.hub.run_info(run_id)
        assert info.status == "finished", info.detail
        lines = [r for r in running.hub.state.log_after(run_id, 0) if r.kind == "round"]
        rounds = [json.loads(line.text) for line in lines]
    finally:
        for agent in agents:
            agent.stop.set()
        running.servers.stop(0)
        running.hub.close()
    assert [r["round"] for r in rounds] == list(range(ROUNDS + 1))
    assert all(r["replies"] == 3 and r["failures"] == 0 for r in rounds[1:]), rounds
    assert all(r["aborted"] is None for r in rounds[1:])
    # The same rounds in simulation, also with secure aggregation: the masked sum is exact,
    # so the nodes' order of arrival changes nothing and the accuracy is the same.
    simulated = _simulate()
    deployed = [r["centralized"]["accuracy"] for r in rounds]
    np.testing.assert_allclose(deployed, simulated, atol=1e-9)


def _simulate() -> list[float]:
    app = load_app(DEMO, {"secure-aggregation": "true", "num-rounds": str(ROUNDS)})
    server_app = app.server_app()
    assert server_app.secure_aggregation == SecAggConfig()
    result = run_simulation(server_app, app.client_fn, 3, run_config=app.config, seed=0)
    return [r.centralized["accuracy"] for r in result.history.rounds]


def _wait(condition, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)
