"""Placement with real node processes: a run's tasks go only to the nodes its selector
matches, re-evaluated every round.

These machines have no GPU: the nodes state theirs by hand (``--resources gpus=1``), as
docs/placement.md says; a node without it reports the ``gpus=0`` it detects.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.deployment.apps import write_tiny_app
from tests.deployment.conftest import Deployment, wait_for

pytestmark = pytest.mark.slow

GPU = ("--resources", "gpus=1")


def fitted(markers: Path, partition: int, rnd: int) -> bool:
    return (markers / f"fit-p{partition}-r{rnd}").exists()


def test_a_gpu_run_gets_only_the_nodes_that_declare_gpus(
    deployment: Deployment, tmp_path: Path
) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    app = write_tiny_app(tmp_path / "app", **{"marker-dir": str(markers)})
    pyproject = app / "pyproject.toml"  # the selector from the app's own settings this time
    pyproject.write_text(
        pyproject.read_text().replace(
            "[tool.pollinate]\n", '[tool.pollinate]\nselect = "gpus>=1"\n'
        )
    )
    deployment.start_hub()
    gpu_nodes = [deployment.start_node(app, p, 3, args=GPU) for p in (0, 1)]
    cpu_node = deployment.start_node(app, 2, 3, args=("--label", "region=eu"))

    result = deployment.run(app)

    assert result.returncode == 0, result.stdout + result.stderr
    log = deployment.cli("log", result.run_id, "--hub", deployment.control, "--no-follow")
    assert "on the nodes that match gpus>=1" in log.stdout
    history = result.history
    assert history is not None and [r["replies"] for r in history[1:]] == [2, 2]
    for rnd in (1, 2):
        assert [fitted(markers, p, rnd) for p in (0, 1, 2)] == [True, True, False]
    # not one task, fit or evaluate, went to the node without a GPU
    assert "serving run" not in cpu_node.process.stderr
    assert all("serving run" in node.process.stderr for node in gpu_nodes)


def test_a_node_that_comes_to_match_joins_at_the_next_round(
    deployment: Deployment, tmp_path: Path
) -> None:
    markers, gate = tmp_path / "markers", tmp_path / "gate"
    markers.mkdir()
    gate.mkdir()
    app = write_tiny_app(
        tmp_path / "app",
        **{"num-rounds": 3, "marker-dir": str(markers), "gate-dir": str(gate)},
    )
    deployment.start_hub()
    gpu_nodes = [deployment.start_node(app, p, 3, args=GPU) for p in (0, 1)]
    late = deployment.start_node(app, 2, 3)
    run = deployment.start_run(app, "--select", "gpus>=1, !draining")

    # round 1 runs on the two GPU nodes; its fits wait at the gate meanwhile
    wait_for(lambda: fitted(markers, 0, 1) and fitted(markers, 1, 1), "round 1's fits")
    listing = deployment.cli("nodes", "--hub", deployment.control, "--json")
    assert listing.returncode == 0, listing.stderr
    listed = json.loads(listing.stdout)
    runs = {n["node_id"]: n["runs"] for n in listed}
    for node in listed:  # live use, read again with every heartbeat
        assert float(node["resources"]["cpu_load"]) >= 0
        assert float(node["resources"]["memory_available_gib"]) > 0
    run_id = re.search(r"run (\w+) submitted", run.process.stdout)
    assert run_id is not None
    assert [runs[n.node_id] for n in gpu_nodes] == [[run_id.group(1)]] * 2
    assert runs[late.node_id] == []
    # the third node gains a GPU: restarted with it (same name, so the same node id)
    late.process.kill()
    again = deployment.start_node(app, 2, 3, args=GPU)
    assert again.node_id == late.node_id
    (gate / "r1").touch()  # round 1 ends; round 2 samples the fleet as it is now
    wait_for(lambda: fitted(markers, 2, 2), "the node that came to match to fit in round 2")
    (gate / "r2").touch()
    (gate / "r3").touch()
    result = run.finish()

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.history is not None
    assert [r["replies"] for r in result.history[1:]] == [2, 3, 3]
    assert not fitted(markers, 2, 1)
    assert "serving run" not in late.process.stderr


def test_an_admin_labels_cordons_and_uncordons_a_node_from_the_command_line(
    deployment: Deployment, tmp_path: Path
) -> None:
    app = write_tiny_app(tmp_path / "app")
    deployment.start_hub()
    node = deployment.start_node(app, 0, 1, args=("--label", "site=berlin"))
    hub, node_id = deployment.control, str(node.node_id)

    def listed() -> dict[str, object]:
        done = deployment.cli("nodes", "--hub", hub, "--json")
        assert done.returncode == 0, done.stderr
        (entry,) = json.loads(done.stdout)
        return dict(entry)

    said = deployment.cli("node", "label", node_id, "region=eu", "site=paris", "--hub", hub)
    assert said.returncode == 0 and "region=eu site=paris" in said.stdout, said.stderr
    assert listed()["labels"] == {"region": "eu", "site": "paris"}  # the hub's label wins
    assert deployment.cli("node", "label", node_id, "site-", "--hub", hub).returncode == 0
    assert listed()["labels"] == {"region": "eu", "site": "berlin"}  # the node's own again
    assert deployment.cli("node", "cordon", node_id, "--hub", hub).returncode == 0
    assert listed()["state"] == "cordoned"
    assert deployment.cli("node", "uncordon", node_id, "--hub", hub).returncode == 0
    assert listed()["state"] == "online"
    bad = deployment.cli("node", "label", node_id, "region", "--hub", hub)
    assert bad.returncode == 2 and "neither KEY=VALUE nor KEY-" in bad.stderr
