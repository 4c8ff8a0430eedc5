"""Health endpoints of a real hub process and a real node agent, over real HTTP.

A node is ready only when it could do a task now: connected (a node id, a heartbeat the hub
answered lately) with its app loaded; it stops being ready when the hub stops answering and
is ready again once a hub answers. The hub is ready once it serves (tests/hub/test_health.py
has its data dir refusing writes).
"""

from __future__ import annotations

import threading
import urllib.error
import urllib.request

from pollinate.node.agent import NodeAgent
from tests.deployment.apps import write_tiny_app
from tests.deployment.conftest import Deployment, Process, _accepts, free_ports, wait_for


def get(address: str, path: str) -> tuple[int, str]:
    """The status and body of ``GET path``; (0, reason) when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except OSError as error:
        return 0, str(error)


def start_hub(deployment: Deployment, address: str, metrics: str) -> Process:
    """``pollinate hub`` on one address (insecure: this test is about health, not TLS)."""
    hub = deployment.spawn(
        "hub",
        "hub",
        "--data-dir",
        str(deployment.directory / "hub-data"),
        "--address",
        address,
        "--metrics-address",
        metrics,
        "--dashboard-address",
        "127.0.0.1:0",
        "--insecure",
        "--heartbeat-timeout",
        "1.2",  # a heartbeat every 0.2 s: a silent hub shows within seconds
    )
    wait_for(lambda: _accepts(address, hub), f"the hub to listen on {address}")
    return hub


def test_hub_probes_answer_on_its_metrics_address(deployment: Deployment) -> None:
    address, metrics = (f"127.0.0.1:{port}" for port in free_ports(2))
    start_hub(deployment, address, metrics)
    wait_for(lambda: get(metrics, "/readyz") == (200, "ok\n"), "the hub to be ready")
    assert get(metrics, "/healthz") == (200, "ok\n")
    assert get(metrics, "/metrics")[0] == 200


def test_a_node_is_ready_while_the_hub_answers_it(deployment: Deployment) -> None:
    address, metrics = (f"127.0.0.1:{port}" for port in free_ports(2))
    hub = start_hub(deployment, address, metrics)
    app = write_tiny_app(deployment.directory / "app")
    agent = NodeAgent(address, app, name="probe", health_address="127.0.0.1:0")
    health = f"127.0.0.1:{agent.health_port}"
    status, text = get(health, "/readyz")
    assert status == 503 and "not connected yet" in text, text  # app loaded, not connected
    assert get(health, "/healthz") == (200, "ok\n")
    serving = threading.Thread(target=agent.run, daemon=True)
    serving.start()
    try:
        wait_for(lambda: get(health, "/readyz") == (200, "ok\n"), "the node to be ready")
        hub.kill()
        wait_for(lambda: get(health, "/readyz")[0] == 503, "the node to see the hub gone", 30)
        status, text = get(health, "/readyz")
        assert "has not answered a heartbeat" in text, text
        assert get(health, "/healthz")[0] == 200  # live: restarting the node would not help
        start_hub(deployment, address, metrics)
        wait_for(lambda: get(health, "/readyz") == (200, "ok\n"), "the node ready again", 60)
        assert get(health, "/nowhere")[0] == 404
    finally:
        agent.shutdown()
        serving.join(30)
    assert not serving.is_alive()
    assert get(health, "/healthz")[0] == 0  # the server ended with the agent
