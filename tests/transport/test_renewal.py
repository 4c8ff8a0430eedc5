"""A node renews its certificate mid-run, and the run does not notice."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pollinate.node.agent as agent_module
from pollinate.app import app_hash
from pollinate.hub.archives import pack_app
from pollinate.node.agent import NodeAgent
from pollinate.security import node_id_from_certificate
from pollinate.transport.client import enrol
from tests.transport.test_tls import start_hub

DEMO = Path(__file__).resolve().parents[2] / "examples" / "quickstart-numpy"


def test_renewal_during_a_run_keeps_the_run_going(tmp_path: Path, monkeypatch) -> None:
    running = start_hub(tmp_path / "hub")
    running.hub.heartbeat_interval = 0.1  # nodes beat (and check renewal) often
    originals: set[bytes] = set()

    def renew_once_per_node(cert_pem: bytes) -> bool:
        # each enrolled certificate is renewed once, while the run is going
        runs = running.hub.state.runs()
        due = cert_pem in originals and bool(runs) and runs[0].status == "running"
        if due:
            originals.discard(cert_pem)
        return due

    monkeypatch.setattr(agent_module, "should_renew", renew_once_per_node)
    agents = []
    for partition in range(2):
        credentials = enrol(running.enrol, running.token())
        originals.add(credentials.cert_pem)
        agent = NodeAgent(
            running.fleet,
            DEMO,
            {"partition-id": str(partition), "num-partitions": "2"},
            credentials=credentials,
            credentials_dir=tmp_path / f"node{partition}",
        )
        agents.append((agent, credentials))
    threads = [threading.Thread(target=a.run, daemon=True) for a, _ in agents]
    try:
        for t in threads:
            t.start()
        _wait(lambda: len(running.hub.fleet.alive()) == 2)
        run_id = running.hub.submit_run(pack_app(DEMO), app_hash(DEMO), {}, 10, 0)
        _wait(lambda: running.hub.run_info(run_id).status != "running", timeout=120)
        info = running.hub.run_info(run_id)
        assert info.status == "finished", info.detail
        for agent, original in agents:
            assert agent.credentials is not None
            assert agent.credentials.cert_pem != original.cert_pem  # renewed
            same_id = node_id_from_certificate(agent.credentials.cert_pem)
            assert same_id == node_id_from_certificate(original.cert_pem)
            saved = tmp_path / f"node{agents.index((agent, original))}" / "node.pem"
            assert saved.read_bytes() == agent.credentials.cert_pem
        rounds = [r for r in running.hub.state.log_after(run_id, 0) if r.kind == "round"]
        assert len(rounds) == 11  # round 0 and ten rounds, none lost to the renewal
        assert '"failures": 0' in rounds[-1].text
    finally:
        for agent, _ in agents:
            agent.stop.set()
        running.servers.stop(0)
        running.hub.close()


def _wait(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)
