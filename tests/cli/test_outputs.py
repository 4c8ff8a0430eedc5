"""What `pollinate run --out` and `--track` leave, and `pollinate plot` drawing it: real
subprocesses, real files, each read back by its own reader."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pollinate import Arrays, load_arrays
from pollinate.cli.outputs import RunOutputs
from pollinate.loop.history import History, RoundRecord
from tests.cli.test_exits import tiny_app
from tests.cli_runner import pollinate

PNG = b"\x89PNG\r\n\x1a\n"


def test_out_holds_the_history_the_model_and_plot_draws_them(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = pollinate("run", tiny_app(tmp_path), "--out", out, "--config", "num-rounds=3")
    assert done.returncode == 0, done.stderr
    header = json.loads((out / "history.jsonl").read_text().splitlines()[0])
    assert header["overrides"] == {"num-rounds": "3"} and header["num_rounds"] == 3
    assert [r.round for r in History.load(out).rounds] == [0, 1, 2, 3]
    model = load_arrays(out / "model.npz")
    assert model["w"].tolist() == [3.0, 3.0]  # three rounds of +1
    with np.load(out / "model.npz") as npz:  # NumPy's own reader, no pickle
        assert npz.files == ["w"]

    drawn = pollinate("plot", out)
    assert drawn.returncode == 0, drawn.stderr
    assert (out / "curves.png").read_bytes()[:8] == PNG
    assert f"curves of 4 rounds written to {out / 'curves.png'}" in drawn.stdout
    elsewhere = pollinate("plot", out / "history.jsonl", "--out", tmp_path / "c.png")
    assert elsewhere.returncode == 0 and (tmp_path / "c.png").read_bytes()[:8] == PNG


def test_plot_of_something_that_is_no_history_exits_2_with_the_reason(tmp_path: Path) -> None:
    (tmp_path / "history.jsonl").write_text('{"not": "a history"}\n')
    for target in (tmp_path, tmp_path / "missing.jsonl"):
        done = pollinate("plot", target)
        assert done.returncode == 2 and "error:" in done.stderr
        assert "Traceback" not in done.stderr


def test_an_unknown_tracker_exits_2_before_the_run(tmp_path: Path) -> None:
    done = pollinate("run", tiny_app(tmp_path), "--track", "wandb:x")
    assert done.returncode == 2
    assert "unknown tracker 'wandb'" in done.stderr and "round" not in done.stdout


def test_track_logs_the_run_to_tensorboard_and_mlflow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator", reason="the tensorboard extra"
    )
    tracking = pytest.importorskip("mlflow.tracking", reason="the mlflow extra")
    tb, ml = tmp_path / "tb", tmp_path / "ml"
    done = pollinate(
        "run", tiny_app(tmp_path), "--track", f"tensorboard:{tb}", "--track", f"mlflow:{ml}"
    )
    assert done.returncode == 0, done.stderr
    events = accumulator.EventAccumulator(str(tb)).Reload()
    assert [e.step for e in events.Scalars("federated/accuracy")] == [1, 2, 3, 4]
    assert events.Histograms("model/w")[0].step == 4  # the final model, without --out
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 reads its file store so
    client = tracking.MlflowClient(ml.resolve().as_uri())
    [run] = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["strategy"] == "FedAvg"
    assert run.data.metrics["federated/loss"] == 4.0
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["model.npz"]


class Failing:
    """A tracker whose store breaks at the first round."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def start(self, history: History) -> None:
        self.calls.append("start")

    def log_round(self, record: RoundRecord) -> None:
        raise OSError("the tracking store is full")

    def finish(self, model: Path | None, status: str) -> None:
        self.calls.append("finish")


def test_a_failing_tracker_is_left_out_and_the_run_and_its_history_go_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tracker = Failing()
    outputs = RunOutputs(History(app="demo"), tmp_path, [tracker])
    for number in (0, 1, 2):
        outputs.add(RoundRecord(round=number))
    assert outputs.finish(Arrays({"w": np.ones(2)}), "finished") == tmp_path / "model.npz"
    assert tracker.calls == ["start"]  # left out after it failed: not finished
    assert "Failing failed, left out from now on: OSError: the tracking store is full" in (
        caplog.text
    )
    assert [r.round for r in History.load(tmp_path).rounds] == [0, 1, 2]
