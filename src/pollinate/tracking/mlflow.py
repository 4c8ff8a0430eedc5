"""``--track mlflow:DIR``: the run as an MLflow run in the file store at ``DIR``.

``DIR`` may also be a tracking URI (``mlflow:http://mlflow.example:5000``,
``mlflow:sqlite:///runs.db``): anything with ``://`` is handed to MLflow as it is. MLflow 3
keeps its file store in maintenance mode and refuses it unless ``MLFLOW_ALLOW_FILE_STORE`` is
set; a directory needs no server and no database, so this tracker sets it (unless the
environment says otherwise).

One experiment per app (named after it), one MLflow run per pollinate run: the parameters
(``scalars.params``), each round's numbers with the round as their step, and the final
model's ``model.npz`` as an artifact. Written through ``MlflowClient`` with its own tracking
URI, never the process's global MLflow state (``mlflow.start_run``), so an app that uses
MLflow itself is left alone. ``mlflow ui --backend-store-uri DIR`` shows it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from mlflow.entities import Metric, Param, RunStatus
from mlflow.tracking import MlflowClient

from pollinate.loop.history import History, RoundRecord
from pollinate.tracking.scalars import params, round_scalars

_PARAM_CHARS = 6000  # MLflow refuses a longer parameter value
_STATUS = {"finished": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}


class MLflowTracker:
    """A ``Tracker`` writing to the MLflow file store in directory ``target`` (created),
    or to the tracking URI ``target``."""

    def __init__(self, target: str) -> None:
        self.client = MlflowClient(tracking_uri=_tracking_uri(target))
        self.run_id = ""

    def start(self, history: History) -> None:
        name = history.app or "pollinate"
        found = self.client.get_experiment_by_name(name)
        experiment = found.experiment_id if found else self.client.create_experiment(name)
        tags = {"pollinate.app_hash": history.app_hash} if history.app_hash else {}
        run = self.client.create_run(experiment, run_name=history.run_id or None, tags=tags)
        self.run_id = run.info.run_id
        logged = [Param(k, v[:_PARAM_CHARS]) for k, v in params(history).items()]
        self.client.log_batch(self.run_id, params=logged)

    def log_round(self, record: RoundRecord) -> None:
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, record.round) for k, v in round_scalars(record).items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self, model: Path | None, status: str) -> None:
        if model is not None:
            self.client.log_artifact(self.run_id, str(model))
        ended = RunStatus.to_string(RunStatus.from_string(_STATUS.get(status, "FAILED")))
        self.client.set_terminated(self.run_id, ended)


def _tracking_uri(target: str) -> str:
    """A URI as it is; a directory (created) as its ``file:`` URI, with the file store
    allowed (this process only)."""
    if "://" in target:
        return target
    directory = Path(target)
    directory.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return directory.resolve().as_uri()
