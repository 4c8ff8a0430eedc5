"""One TLS hub shared by two projects, driven through the CLI as its users would, with real
hub and node processes on 127.0.0.1 (issue 14).

The admin adds users (each logs in with their own config directory) and makes a join token
per project; project a has nodes with partitions 0, 0 and 1, project b two with partition 2,
all serving the same app (FedAvg asks for two nodes). Every fit of partition p reports
``partition = p``, so a run's aggregated metric says whose nodes trained it. Alice (member of
a) runs three paced rounds; while round 2 is held, the others try what their roles forbid,
and the admin revokes the partition-1 node, whose task fails with the reason while the run
finishes on the others.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pollinate.artifacts import load_arrays
from tests.deployment.apps import write_tiny_app
from tests.deployment.conftest import Deployment, Process, wait_for
from tests.deployment.test_large_model import start_tls_hub


def as_user(deployment: Deployment, name: str) -> dict[str, str]:
    """The environment of user ``name``: their own config directory, no admin credential."""
    return {
        "XDG_CONFIG_HOME": str(deployment.directory / f"home-{name}"),
        "POLLINATE_CREDENTIALS": "",
    }


def rounds_of(out: Path) -> list[dict[str, Any]]:
    """The round records of the history a run wrote (after its header line)."""
    lines = (out / "history.jsonl").read_text().splitlines()[1:]
    return [json.loads(line) for line in lines]


def ok(done: object) -> str:
    """The output of a command that must succeed."""
    assert done.returncode == 0, f"{done.stdout}{done.stderr}"
    return str(done.stdout)


def refused(done: object) -> str:
    """What a command that must be refused (exit 2) said."""
    assert done.returncode == 2, f"{done.stdout}{done.stderr}"
    return " ".join(str(done.stderr).split())


def add_user(deployment: Deployment, name: str, role: str, project: str) -> dict[str, str]:
    """Add the user as the admin, log them in, and return their environment."""
    hub = deployment.control
    token = ok(
        deployment.cli("user", "add", name, "--role", role, "--project", project, "--hub", hub)
    )
    env = as_user(deployment, name)
    said = ok(deployment.cli("login", "--hub", hub, "--token", token.strip(), env=env))
    assert f"as {name}" in said
    return env


def start_node(
    deployment: Deployment, app: Path, token: str, partition: int
) -> tuple[Process, int]:
    node = deployment.spawn(
        f"node-p{partition}",
        *("node", "--hub", deployment.fleet, "--app", str(app), "--token", token, "--verbose"),
        # a data dir of its own: two nodes may serve one partition
        *("--data-dir", str(deployment.directory / f"node-{len(deployment.processes)}")),
        *("--node-config", f"partition-id={partition}", "--node-config", "num-partitions=3"),
    )

    def connected() -> int | None:
        assert node.alive(), f"{node.name} exited before it connected:\n{node.stderr}"
        found = re.search(r"connected as node (\d+)", node.stderr)
        return int(found.group(1)) if found else None

    return node, int(wait_for(connected, f"{node.name} to connect"))


def test_two_projects_share_one_hub_each_seeing_and_steering_only_its_own(
    deployment: Deployment, tmp_path: Path
) -> None:
    app = write_tiny_app(tmp_path / "app", **{"num-rounds": 1})
    start_tls_hub(deployment)  # the deployment's commands act as its admin
    hub = deployment.control
    alice = add_user(deployment, "alice", "member", "a")
    bob = add_user(deployment, "bob", "member", "b")
    vic = add_user(deployment, "vic", "viewer", "a")
    assert "alice" in ok(deployment.cli("whoami", "--hub", hub, env=alice))

    token_a = ok(deployment.cli("token", "create", "--project", "a", "--uses", "3", "--hub", hub))
    token_b = ok(deployment.cli("token", "create", "--project", "b", "--uses", "2", "--hub", hub))
    for partition in (0, 0):
        start_node(deployment, app, token_a.strip(), partition)
    node_1, node_1_id = start_node(deployment, app, token_a.strip(), 1)
    for partition in (2, 2):
        start_node(deployment, app, token_b.strip(), partition)

    # bob's run in project b: only its nodes (partition 2) train it
    bobs = deployment.directory / "bob-run"
    ok(deployment.cli("run", app, "--hub", hub, "--project", "b", "--out", bobs, env=bob))
    bob_rounds = rounds_of(bobs)
    assert [r["replies"] for r in bob_rounds] == [0, 2]
    assert bob_rounds[1]["fit"]["partition"] == 2.0
    assert load_arrays(bobs / "model.npz").keys() == {"w"}  # the final model, pulled

    # alice's run in project a, held at round 2 until the others have tried their luck
    gates, markers = deployment.directory / "gates", deployment.directory / "markers"
    gates.mkdir(), markers.mkdir()
    (gates / "r1").touch()
    alices = deployment.directory / "alice-run"
    run = deployment.spawn(
        "alice-run",
        *("run", str(app), "--hub", hub, "--project", "a", "--rounds", "3", "--out", str(alices)),
        *("--config", f"gate-dir={gates}", "--config", f"marker-dir={markers}"),
        env=alice,
    )
    wait_for(
        lambda: all((markers / f"fit-p{p}-r2").exists() for p in (0, 1)),
        "project a's nodes to start round 2",
    )
    run_id = re.search(r"run (\S+) submitted", run.stdout)
    assert run_id is not None, run.stdout
    alice_run = run_id.group(1)

    listed = {
        name: ok(deployment.cli("ls", "--hub", hub, env=env))
        for name, env in (("alice", alice), ("bob", bob), ("vic", vic))
    }
    assert alice_run in listed["alice"] and alice_run in listed["vic"]
    assert alice_run not in listed["bob"]
    assert "needs role member or admin in project a" in refused(
        deployment.cli("stop", alice_run, "--hub", hub, env=vic)
    )
    assert "in project a" in refused(deployment.cli("stop", alice_run, "--hub", hub, env=bob))
    assert "in project a" in refused(
        deployment.cli("log", alice_run, "--hub", hub, "--no-follow", env=bob)
    )
    assert "needs role admin" in refused(deployment.cli("audit", "--hub", hub, env=alice))
    assert "needs role admin" in refused(deployment.cli("token", "create", "--hub", hub, env=alice))

    # the admin revokes node 1 while it holds its round-2 task; the run goes on without it
    ok(deployment.cli("node", "revoke", str(node_1_id), "--hub", hub))
    (gates / "r2").touch(), (gates / "r3").touch()
    assert run.popen.wait(timeout=120) == 0, run.stdout + run.stderr
    rounds = rounds_of(alices)  # the initial evaluation and three rounds
    assert [r["replies"] for r in rounds] == [0, 3, 2, 2]
    assert [r["fit"]["partition"] for r in rounds[1:]] == [0.5, 0.0, 0.0]  # never b's nodes
    [revoked] = rounds[2]["failed"]  # the hub's word, not the node's: kind "lost"
    assert re.match(rf"node {node_1_id} was revoked by admin", revoked["reason"])
    assert (revoked["node_id"], revoked["kind"]) == (node_1_id, "lost")
    pulled = deployment.directory / "pulled"
    said = ok(deployment.cli("pull", alice_run, "--out", pulled, "--hub", hub, env=vic))
    assert "round 3" in said
    final = load_arrays(pulled / "model.npz")["w"]
    said = ok(
        deployment.cli("pull", alice_run, "--round", "1", "--out", pulled, "--hub", hub, env=alice)
    )
    assert "round 1" in said
    first = load_arrays(pulled / "model.npz")["w"]
    assert 0 < first[0] < final[0]  # each round adds what its nodes add
    assert "in project a" in refused(
        deployment.cli("pull", alice_run, "--out", pulled, "--hub", hub, env=bob)
    )
    wait_for(lambda: not node_1.alive(), "the revoked node to stop")
    assert "revoked" in node_1.stderr

    # the audit tells who did what; a revoked user is refused at their next call
    audit = " ".join(ok(deployment.cli("audit", "--hub", hub, "--limit", "200")).split())
    assert re.search(rf"admin\W+revoke node\W+node {node_1_id}\W+ok", audit), audit
    assert re.search(rf"vic\W+stop runs\W+a\W+run {alice_run}\W+refused", audit), audit
    ok(deployment.cli("user", "revoke", "vic", "--hub", hub))
    assert "vic was revoked" in refused(deployment.cli("ls", "--hub", hub, env=vic))
    users = ok(deployment.cli("user", "ls", "--hub", hub))
    assert re.search(r"vic .* by admin", users), users
