"""A node runs only the app version a run was submitted with: the app hash is its identity."""

from __future__ import annotations

import shutil
from pathlib import Path

from pollinate.app import app_hash
from tests.deployment.apps import write_tiny_app
from tests.deployment.conftest import Deployment


def test_a_node_with_another_app_version_refuses_its_tasks(
    deployment: Deployment, tmp_path: Path
) -> None:
    app = write_tiny_app(tmp_path / "app", **{"num-rounds": 1})
    edited = shutil.copytree(app, tmp_path / "edited")
    client = edited / "tiny_app" / "client.py"
    client.write_text(client.read_text() + "# edited at this site only\n")
    run_hash, node_hash = app_hash(app), app_hash(edited)
    assert run_hash != node_hash

    deployment.start_hub()
    nodes = deployment.start_nodes([app, app, edited])
    result = deployment.run(app)

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.history is not None
    first = result.history[1]
    assert (first["replies"], first["failures"], first["applied"]) == (2, 1, True)
    # both stages went to the edited node, and it refused both, naming both versions
    assert sorted(f["stage"] for f in first["failed"]) == ["evaluate", "fit"]
    for failure in first["failed"]:
        assert failure["node_id"] == nodes[2].node_id
        assert f"node {nodes[2].node_id} refuses the task" in failure["reason"]
        assert run_hash[:12] in failure["reason"] and node_hash[:12] in failure["reason"]
