"""--track tensorboard:DIR: per-round scalars, the parameters and the final model as event
files, read back with TensorBoard's own EventAccumulator. Runs where the `tensorboard` extra
is installed."""

from __future__ import annotations

from pathlib import Path

import pytest

from pollinate.tracking import tracker_for

from .records import header, model, rounds

accumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator",
    reason="the optional `tensorboard` extra",
)


def test_a_run_reads_back_with_tensorboards_accumulator(tmp_path: Path) -> None:
    logdir = tmp_path / "tb"
    tracker = tracker_for(f"tensorboard:{logdir}")
    tracker.start(header())
    for record in rounds():
        tracker.log_round(record)
    tracker.finish(model(tmp_path), "finished")

    events = accumulator.EventAccumulator(str(logdir), size_guidance={"tensors": 0}).Reload()
    accuracy = events.Scalars("centralized/accuracy")
    assert [(e.step, round(e.value, 6)) for e in accuracy] == [(0, 0.1), (1, 0.6)]
    assert [e.value for e in events.Scalars("round/replies")] == [9, 10]
    assert "federated/odd name_" in events.Tags()["scalars"]
    histogram = events.Histograms("model/fc.weight")[0]
    assert histogram.step == 2 and histogram.histogram_value.num == 12
    [text] = events.Tensors("run")
    table = text.tensor_proto.string_val[0].decode()
    assert "| strategy | FedAvg |" in table and "| config.lr | 0.5 |" in table
    assert (logdir / "model.npz").exists()


def test_an_unknown_tracker_or_a_missing_directory_says_what_to_write() -> None:
    with pytest.raises(ValueError, match="(?s)unknown tracker 'wandb'.*Hint: --track mlflow:DIR"):
        tracker_for("wandb:x")
    with pytest.raises(ValueError, match="names no directory"):
        tracker_for("tensorboard")
