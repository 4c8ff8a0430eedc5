"""The Flower shapes map onto pollinate's, and their misuse says what to write instead."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pollinate import AppError
from pollinate.app import load_app
from pollinate.client import Context, handle
from pollinate.flower import (
    FLOWER_VALIDATION,
    ArrayRecord,
    ClientApp,
    FedAvg,
    Message,
    MetricRecord,
    RecordDict,
    ServerApp,
    ServerAppComponents,
    ServerConfig,
)
from pollinate.records import Arrays
from pollinate.records import Message as Task
from pollinate.simulation import SimulationGrid


def test_flower_strategy_arguments_map_onto_sampling() -> None:
    strategy = FedAvg(fraction_fit=0.5, min_fit_clients=3, min_available_clients=4)
    assert (strategy.sampling.fraction_fit, strategy.min_fit_clients) == (0.5, 3)
    assert strategy.min_available_clients == 4
    assert FedAvg(accept_failures=False).failure_tolerance == 0.0
    # Flower rounds n * fraction down: 0.5 of 7 is 3 (pollinate's own FedAvg asks 4)
    assert len(strategy.sample_fit(range(7), np.random.default_rng(0))) == 3


def test_server_fn_components_become_a_server_app_with_flowers_screening() -> None:
    app = ServerApp(
        server_fn=lambda ctx: ServerAppComponents(
            strategy=FedAvg(), config=ServerConfig(num_rounds=ctx.run_config["rounds"])
        )
    )
    server_app = app({"rounds": 4})
    assert server_app.num_rounds == 4
    assert server_app.validation == FLOWER_VALIDATION


def test_server_fn_returning_something_else_says_what_to_return() -> None:
    with pytest.raises(AppError, match="ServerAppComponents"):
        ServerApp(server_fn=lambda ctx: FedAvg())({})


def test_message_client_weights_by_num_examples_and_reports_the_rest() -> None:
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        assert msg.content["config"]["lr"] == 0.1
        w = msg.content["arrays"].to_numpy_ndarrays()[0]
        metrics = MetricRecord({"loss": 0.25, "num-examples": 7})
        return Message(RecordDict({"arrays": ArrayRecord([w + 1]), "m": metrics}), reply_to=msg)

    task = Task(
        "fit", task_id="t", node_id=0, arrays=Arrays({"0": np.zeros(2)}), config={"lr": 0.1}
    )
    reply = handle(app, Context(0, 0, 1), task)
    assert reply.error is None
    assert (reply.num_examples, reply.metrics) == (7, {"loss": 0.25})
    assert reply.arrays["0"].tolist() == [1.0, 1.0]


def test_a_reply_without_num_examples_fails_its_task_with_a_hint() -> None:
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return Message(RecordDict({"arrays": msg.content["arrays"]}), reply_to=msg)

    task = Task("fit", task_id="t", node_id=0, arrays=Arrays({"0": np.zeros(2)}))
    error = handle(app, Context(0, 0, 1), task).error
    assert error is not None and "num-examples" in error


def test_start_runs_on_a_pollinate_grid_and_returns_flowers_result() -> None:
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        assert msg.content["config"]["server-round"] in (1, 2)  # as Flower's strategies send
        w = msg.content["arrays"].to_numpy_ndarrays()[0]
        n = context.node_config["partition-id"] + 1
        metrics = MetricRecord({"num-examples": n, "seen": float(n)})
        return Message(RecordDict({"arrays": ArrayRecord([w + n]), "m": metrics}), reply_to=msg)

    grid = SimulationGrid(app, 2)
    try:
        result = FedAvg(fraction_evaluate=0.0).start(
            grid=grid, initial_arrays=ArrayRecord([np.zeros(1)]), num_rounds=2
        )
    finally:
        grid.close()
    # weighted by examples 1 and 2: each round adds (1 * 1 + 2 * 2) / 3
    assert result.arrays.to_numpy_ndarrays()[0].tolist() == pytest.approx([10 / 3])
    assert result.train_metrics_clientapp[2] == {"seen": pytest.approx(5 / 3)}


def test_main_that_never_starts_a_strategy_is_an_app_error() -> None:
    app = ServerApp()

    @app.main()
    def main(grid: object, context: Context) -> None:
        return None

    with pytest.raises(AppError, match="without calling strategy.start"):
        app({})


def test_a_flwr_pyproject_without_components_says_what_to_add(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.flwr.app]\npublisher = "me"\n')
    with pytest.raises(AppError, match=r"serverapp = \"mypkg.server_app:app\""):
        load_app(tmp_path)
