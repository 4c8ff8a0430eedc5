"""Record what Flower itself makes of the apps in ``apps/``: run ONCE, by hand, with Flower.

    python3 -m venv /tmp/flwr && /tmp/flwr/bin/pip install "flwr[simulation]==1.41.*" \
        scikit-learn numpy
    /tmp/flwr/bin/python tests/compat/record_flower.py

It runs each app exactly as it is (its ``flwr`` imports unchanged) in Flower's simulation
engine with the app's own run config and number of supernodes, watches the strategy's
aggregates round by round (the global arrays after each round's fit, the aggregated fit and
evaluate metrics and the distributed loss), and writes ``recorded/<app>.json``. The tests
compare pollinate's runs of the same apps against those numbers; Flower is never a
dependency of pollinate or of its tests.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
APPS = HERE / "apps"


def main() -> None:
    import flwr

    os.chdir(tempfile.mkdtemp())  # where an app saves its final model
    for app in sorted(p for p in APPS.iterdir() if (p / "pyproject.toml").is_file()):
        rounds: dict[int, dict[str, Any]] = {}
        _watch(rounds)
        flower_config = _run(app)
        out = {
            "flower": flwr.__version__,
            "numpy": np.__version__,
            "scikit-learn": importlib.import_module("sklearn").__version__,
            "app": app.name,
            **flower_config,
            "rounds": [rounds[r] for r in sorted(rounds)],
        }
        path = HERE / "recorded" / f"{app.name}.json"
        path.write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {path}: {len(rounds)} rounds")


def _run(app: Path) -> dict[str, Any]:
    from flwr.app import Context, RecordDict
    from flwr.simulation.run_simulation import _run_simulation
    from flwr.supercore.run import Run
    from flwr.supercore.telemetry import EventType

    flwr_table = tomllib.loads((app / "pyproject.toml").read_text())["tool"]["flwr"]
    components = flwr_table["app"]["components"]
    run_config = dict(flwr_table["app"]["config"])
    federation = flwr_table["federations"][flwr_table["federations"]["default"]]
    supernodes = int(federation["options"]["num-supernodes"])
    sys.path.insert(0, str(app))
    server_app = _component(components["serverapp"])
    client_app = _component(components["clientapp"])
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.constant import NOOP_FEDERATION_ID
    from flwr.supercore.task_identity import TaskIdentity

    run = Run.create_empty(run_id=1)
    run.primary_task_id = 1
    run.federation_id = NOOP_FEDERATION_ID
    TaskIdentity.task_id, TaskIdentity.run_id = 1, 1
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    context = Context(
        run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config
    )
    _run_simulation(
        num_supernodes=supernodes,
        exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
        client_app=client_app,
        server_app=server_app,
        server_app_context=context,
        app_dir=str(app),
        run=run,
        backend_config={"client_resources": {"num_cpus": 1}},
        is_app=True,  # so that the ClientApps get the run config from app_dir, as `flwr run`
    )
    return {"num-supernodes": supernodes, "run-config": run_config}


def _component(ref: str) -> Any:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def _watch(rounds: dict[int, dict[str, Any]]) -> None:
    """Wrap both generations of Flower's FedAvg to note each round's aggregates."""
    from flwr.common import parameters_to_ndarrays
    from flwr.server.strategy import FedAvg as ClassicFedAvg
    from flwr.serverapp.strategy import FedAvg as MessageFedAvg

    def entry(rnd: int) -> dict[str, Any]:
        return rounds.setdefault(rnd, {"round": rnd})

    classic_fit, classic_eval = ClassicFedAvg.aggregate_fit, ClassicFedAvg.aggregate_evaluate

    def aggregate_fit(self, server_round, results, failures):  # type: ignore[no-untyped-def]
        parameters, metrics = classic_fit(self, server_round, results, failures)
        arrays = parameters_to_ndarrays(parameters) if parameters is not None else []
        entry(server_round).update(
            replies=len(results), arrays=[a.tolist() for a in arrays], fit=dict(metrics)
        )
        return parameters, metrics

    def aggregate_evaluate(self, server_round, results, failures):  # type: ignore[no-untyped-def]
        loss, metrics = classic_eval(self, server_round, results, failures)
        entry(server_round)["evaluate"] = {"loss": loss, **metrics}
        return loss, metrics

    message_train, message_eval = MessageFedAvg.aggregate_train, MessageFedAvg.aggregate_evaluate

    def aggregate_train(self, server_round, replies):  # type: ignore[no-untyped-def]
        replies = list(replies)
        arrays, metrics = message_train(self, server_round, replies)
        entry(server_round).update(
            replies=len(replies),
            arrays=[a.tolist() for a in arrays.to_numpy_ndarrays()],
            fit=dict(metrics or {}),
        )
        return arrays, metrics

    def aggregate_evaluate_message(self, server_round, replies):  # type: ignore[no-untyped-def]
        metrics = message_eval(self, server_round, replies)
        entry(server_round)["evaluate"] = dict(metrics or {})
        return metrics

    ClassicFedAvg.aggregate_fit = aggregate_fit
    ClassicFedAvg.aggregate_evaluate = aggregate_evaluate
    MessageFedAvg.aggregate_train = aggregate_train
    MessageFedAvg.aggregate_evaluate = aggregate_evaluate_message


if __name__ == "__main__":
    main()
