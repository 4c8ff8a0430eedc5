"""--track mlflow:DIR: parameters, per-round metrics and the final model in an MLflow file
store, read back with MLflow's own client. Runs where the `mlflow` extra is installed."""

from __future__ import annotations

from pathlib import Path

import pytest

from pollinate.tracking import tracker_for

from .records import header, model, rounds

mlflow_tracking = pytest.importorskip("mlflow.tracking", reason="the optional `mlflow` extra")


def test_a_run_reads_back_with_mlflows_client(tmp_path: Path) -> None:
    tracker = tracker_for(f"mlflow:{tmp_path / 'mlruns'}")
    tracker.start(header())
    for record in rounds():
        tracker.log_round(record)
    tracker.finish(model(tmp_path), "finished")

    client = mlflow_tracking.MlflowClient((tmp_path / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name("demo")
    assert experiment is not None
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params == {
        "app": "demo",
        "app_hash": "3f2a",
        "seed": "7",
        "strategy": "FedAvg",
        "num_rounds": "2",
        "clients": "10",
        "pollinate": header().pollinate,
        "config.lr": "0.5",
        "config.local_epochs": "2",
    }
    history = client.get_metric_history(run.info.run_id, "centralized/accuracy")
    assert [(m.step, m.value) for m in history] == [(0, 0.1), (1, 0.6)]
    assert [m.value for m in client.get_metric_history(run.info.run_id, "round/replies")] == [
        9,
        10,
    ]
    assert "federated/odd name_" in run.data.metrics  # a node's name, kept to safe characters
    assert "federated/note" not in run.data.metrics and "federated/loss" in run.data.metrics
    assert run.data.metrics["federated/loss"] == 1.5  # round 2's NaN is not logged
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["model.npz"]


def test_an_interrupted_run_ends_killed_without_a_model(tmp_path: Path) -> None:
    tracker = tracker_for(f"mlflow:{tmp_path}")
    tracker.start(header())
    tracker.finish(None, "interrupted")
    client = mlflow_tracking.MlflowClient(tmp_path.resolve().as_uri())
    [run] = client.search_runs([client.get_experiment_by_name("demo").experiment_id])
    assert run.info.status == "KILLED" and client.list_artifacts(run.info.run_id) == []
