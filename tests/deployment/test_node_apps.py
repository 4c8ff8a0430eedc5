"""One node process serves several apps (`pollinate node --app A --app B`): runs of either
are answered by the same nodes, each task by its own app, and the node's own metrics count
what it did (real hub and node processes)."""

from __future__ import annotations

import urllib.request
from pathlib import Path

from tests.deployment.apps import write_tiny_app
from tests.deployment.conftest import Deployment, free_ports


def scrape(address: str) -> dict[str, float]:
    """The node's metrics, ``name{labels}`` to value."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    pairs = (line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#"))
    return {name: float(value) for name, value in pairs}


def test_one_node_serves_the_runs_of_two_apps(deployment: Deployment, tmp_path: Path) -> None:
    first = write_tiny_app(tmp_path / "first", **{"num-rounds": 1})
    second = write_tiny_app(tmp_path / "second", **{"num-rounds": 2, "strategy": "FedMedian"})
    deployment.start_hub()
    health = [f"127.0.0.1:{port}" for port in free_ports(2)]
    for partition in (0, 1):
        apps = ("--app", str(second), "--health-address", health[partition])
        deployment.start_node(first, partition, 2, args=apps)
    for app, rounds in ((first, 1), (second, 2)):
        result = deployment.run(app)
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.history is not None
        assert [r["replies"] for r in result.history] == [0] + [2] * rounds
    metrics = scrape(health[0])
    assert metrics['pollinate_node_tasks_total{kind="fit",outcome="ok"}'] == 1 + 2
    assert metrics["pollinate_node_received_array_bytes_total"] >= 3 * 32  # 4 float64s a model
    assert metrics["pollinate_node_sent_array_bytes_total"] == 3 * 32  # 3 fit updates
    assert metrics['pollinate_node_task_seconds_total{kind="fit"}'] > 0
    assert metrics['pollinate_node_resource{resource="cpus"}'] >= 1
