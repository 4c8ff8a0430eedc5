"""The server side: FedAvg, with the global model evaluated on the held-out test set."""

from __future__ import annotations

from jax_digits import task
from pollinate import Arrays, Config, FedAvg, Metrics, Sampling, ServerApp, Validation
from pollinate.frameworks.jax import get_arrays, set_arrays


def server_fn(run_config: Config) -> ServerApp:
    _, _, x_test, y_test = task.load_data(int(run_config["data-seed"]))
    template = task.initial_params()

    def evaluate_test_set(round: int, arrays: Arrays) -> tuple[float, Metrics]:
        loss, accuracy = task.evaluate(set_arrays(template, arrays), x_test, y_test)
        return loss, {"accuracy": accuracy}

    def fit_config(round: int) -> Config:
        # JaxClient shuffles with seed + round, so each round sees a new order.
        return {"round": round}

    strategy = FedAvg(
        evaluate_fn=evaluate_test_set,
        on_fit_config_fn=fit_config,
        sampling=Sampling(fraction_fit=float(run_config["fraction-fit"]), fraction_evaluate=0.5),
    )
    validation = Validation(anomaly_threshold=float(run_config["anomaly-threshold"]) or None)
    return ServerApp(
        strategy,
        num_rounds=int(run_config["num-rounds"]),
        initial_arrays=get_arrays(template),
        validation=validation,
    )
