"""One node process serves several apps (`pollinate node --app A --app B`): runs of either
are answered by the same nodes, each task by its own app (real hub and node processes)."""

from __future__ import annotations

from pathlib import Path

from tests.deployment.apps import write_tiny_app
from tests.deployment.conftest import Deployment


def test_one_node_serves_the_runs_of_two_apps(deployment: Deployment, tmp_path: Path) -> None:
    first = write_tiny_app(tmp_path / "first", **{"num-rounds": 1})
    second = write_tiny_app(tmp_path / "second", **{"num-rounds": 2, "strategy": "FedMedian"})
    deployment.start_hub()
    for partition in (0, 1):
        deployment.start_node(first, partition, 2, args=("--app", str(second)))
    for app, rounds in ((first, 1), (second, 2)):
        result = deployment.run(app)
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.history is not None
        assert [r["replies"] for r in result.history] == [0] + [2] * rounds
