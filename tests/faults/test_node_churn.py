"""Nodes die, restart and come back mid-run: a round needs its quorum, not particular nodes.

Fault: in every round, SIGKILL 30% of the nodes while they train. Two of the three come back
at once (a new process under the same name: the hub sends it the task the dead process
took); the third stays dead until the round is over (the hub fails its task when it falls
silent). Expectation: every round completes with the model updated, losing only tasks of the
nodes that were killed in it, and the restarted nodes take part in the rounds after. On a
loaded machine a restarted process may take longer than the heartbeat timeout to come back;
its task then fails too, so the test bounds failures by the victims, not by a count.
"""

from __future__ import annotations

import random
from pathlib import Path

from tests.deployment.apps import write_tiny_app
from tests.deployment.conftest import Deployment, Node, wait_for

NODES = 10
ROUNDS = 4
ROUND_TIMEOUT = 60.0
HEARTBEAT_TIMEOUT = 8.0  # well before the deadline, yet no live node misses it under load


def test_killing_30_percent_of_the_nodes_in_every_round_costs_no_round(
    deployment: Deployment, tmp_path: Path
) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    app = write_tiny_app(
        tmp_path / "app",
        **{
            "num-rounds": ROUNDS,
            "fit-seconds": 1.5,
            "marker-dir": str(markers),
            "round-timeout": ROUND_TIMEOUT,
        },
    )
    deployment.start_hub(heartbeat_timeout=HEARTBEAT_TIMEOUT)
    nodes = deployment.start_nodes([app] * NODES)
    run = deployment.start_run(app)
    rng = random.Random(1)
    late: list[Node] = []
    killed: dict[int, set[int]] = {}  # round -> the node ids killed in it
    for rnd in range(1, ROUNDS + 1):
        victims = rng.sample(nodes, 3)
        killed[rnd] = {victim.node_id for victim in victims}
        for victim in victims:  # each is killed while it trains
            marker = markers / f"fit-p{victim.partition}-r{rnd}"
            wait_for(marker.exists, f"partition {victim.partition} to start round {rnd}")
            victim.process.kill()
        for victim in late:  # last round's straggler comes back now
            nodes[victim.partition] = deployment.start_node(app, victim.partition, NODES)
        for victim in victims[:2]:
            nodes[victim.partition] = deployment.start_node(app, victim.partition, NODES)
        late = victims[2:]
    for victim in late:
        nodes[victim.partition] = deployment.start_node(app, victim.partition, NODES)
    result = run.finish(timeout=ROUNDS * ROUND_TIMEOUT + 60)

    assert result.returncode == 0, result.stdout + result.stderr
    history = result.history
    assert history is not None and [r["round"] for r in history] == list(range(ROUNDS + 1))
    for record in history[1:]:
        assert record["applied"], record
        # sampled: the nodes alive at the round's start (last round's straggler is not);
        # lost: only nodes killed in this round (their restarted peers usually answer)
        victims = killed[record["round"]]
        assert NODES - 1 - len(victims) <= record["replies"] <= NODES - record["failures"]
        assert {f["node_id"] for f in record["failed"]} <= victims, record
        for failure in record["failed"]:
            assert "went silent" in failure["reason"], failure
    # the restarted nodes trained again: every partition has fits in the last round but one
    restarted = {p.name for p in markers.glob(f"fit-p*-r{ROUNDS}")}
    assert len(restarted) >= NODES - 3
    print(
        "measured: rounds took "
        + ", ".join(f"{r['seconds']:.1f}" for r in history[1:])
        + f" s (deadline {ROUND_TIMEOUT:g} s); replies "
        + ", ".join(f"{r['replies']}/{NODES}" for r in history[1:])
    )


def test_a_node_that_joins_mid_run_trains_from_the_next_round(
    deployment: Deployment, tmp_path: Path
) -> None:
    gates = tmp_path / "gates"
    gates.mkdir()
    app = write_tiny_app(tmp_path / "app", **{"num-rounds": 3, "gate-dir": str(gates)})
    deployment.start_hub()
    deployment.start_nodes([app, app])
    run = deployment.start_run(app)
    (gates / "r1").touch()
    run.wait_for_output("round   1")
    # round 2 was sampled from the two nodes as round 1 ended; the newcomer joins now
    deployment.start_node(app, partition=2, partitions=3)
    (gates / "r2").touch()
    run.wait_for_output("round   2")
    (gates / "r3").touch()
    result = run.finish()

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.history is not None
    assert [r["replies"] for r in result.history[1:]] == [2, 2, 3]
    assert all(r["failures"] == 0 for r in result.history)
