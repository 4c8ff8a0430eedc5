"""The server side: FedAvg, with the global model evaluated on the held-out test set."""

from __future__ import annotations

from pollinate import Arrays, Config, FedAvg, Metrics, ServerApp
from quickstart_numpy import task


def server_fn(run_config: Config) -> ServerApp:
    _, _, x_test, y_test = task.load_data(int(run_config["data-seed"]))

    def evaluate_test_set(round: int, arrays: Arrays) -> tuple[float, Metrics]:
        loss, accuracy = task.evaluate(arrays, x_test, y_test)
        return loss, {"accuracy": accuracy}

    def fit_config(round: int) -> Config:
        keys = ("local-epochs", "batch-size", "learning-rate")
        return {"round": round, **{k: run_config[k] for k in keys}}

    strategy = FedAvg(
        fraction_fit=float(run_config["fraction-fit"]),
        fraction_evaluate=0.5,
        evaluate_fn=evaluate_test_set,
        on_fit_config_fn=fit_config,
    )
    return ServerApp(
        strategy, num_rounds=int(run_config["num-rounds"]), initial_arrays=task.initial_arrays()
    )
