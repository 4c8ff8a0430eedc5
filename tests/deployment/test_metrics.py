"""The hub's /metrics, scraped during and after a real run, agree with the run's history."""

from __future__ import annotations

import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.deployment.apps import write_tiny_app
from tests.deployment.conftest import Deployment, wait_for


def scrape(address: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample ``/metrics`` shows now, by name and labels."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_during_and_after_a_run_agree_with_its_history(
    deployment: Deployment, tmp_path: Path
) -> None:
    gates = tmp_path / "gates"
    gates.mkdir()
    # partition 1's update (norm 4) is over max-norm every round: one rejection a round
    config = {"num-rounds": 3, "gate-dir": str(gates), "max-norm": 3.0}
    app = write_tiny_app(tmp_path / "app", **config)
    deployment.start_hub()
    nodes = deployment.start_nodes([app, app])
    before = scrape(deployment.metrics)
    assert value(before, "pollinate_nodes", state="online", project="default") == 2
    run = deployment.start_run(app)
    (gates / "r1").touch()
    run_id = wait_for(lambda: _running_run(deployment.metrics), "round 1 in the metrics")
    during = scrape(deployment.metrics)  # round 2 is held at its gate: the run is under way
    assert value(during, "pollinate_runs", status="running") == 1
    assert value(during, "pollinate_run_round", run=run_id) == 1
    (gates / "r2").touch()
    (gates / "r3").touch()
    result = run.finish()
    assert result.returncode == 0, result.stdout + result.stderr
    history = result.history
    assert history is not None and len(history) == 4
    after = scrape(deployment.metrics)
    fit_replies = sum(r["replies"] for r in history)
    assert value(after, "pollinate_replies_total", run=run_id, stage="fit", outcome="ok") == (
        fit_replies
    )
    assert value(after, "pollinate_tasks_total", run=run_id, stage="fit") == 2 * 3
    assert value(after, "pollinate_rounds_total", run=run_id, applied="true") == 4
    assert value(after, "pollinate_run_round", run=run_id) == 3
    assert value(after, "pollinate_round_duration_seconds_count", run=run_id) == 4
    total = value(after, "pollinate_round_duration_seconds_sum", run=run_id)
    assert abs(total - sum(r["seconds"] for r in history)) < 1e-6
    aggregation = value(after, "pollinate_aggregation_duration_seconds_sum", run=run_id)
    assert abs(aggregation - sum(r["aggregation_seconds"] for r in history)) < 1e-6
    assert 0 < aggregation < total
    rejected = [f for r in history for f in r["failed"] if f["kind"] == "rejected"]
    assert len(rejected) == 3 == sum(r["rejected"] for r in history)
    assert {f["node_id"] for f in rejected} == {nodes[1].node_id}
    failures = value(after, "pollinate_failures_total", run=run_id, stage="fit", kind="rejected")
    assert failures == value(after, "pollinate_rejected_updates_total", run=run_id) == 3
    assert not [f for r in history for f in r["failed"] if f["kind"] != "rejected"]
    assert value(after, "pollinate_runs", status="finished") == 1
    assert 0 <= value(after, "pollinate_node_heartbeat_age_seconds", node="1") < 60
    # the tiny model is 4 float64s: 32 bytes in every task that carries it and every update
    # the hub recorded (the rejected ones too: they are screened after they are recorded)
    assert value(after, "pollinate_reply_array_bytes_total") == 32 * (fit_replies + 3)
    sent = value(after, "pollinate_task_array_bytes_total")
    assert sent >= 32 * 2 * 3 and sent % 32 == 0


def _running_run(address: str) -> str | None:
    """The id of a run whose round 1 the metrics show, if any."""
    for (name, labels), sample in scrape(address).items():
        if name == "pollinate_run_round" and sample >= 1:
            return dict(labels)["run"]
    return None
