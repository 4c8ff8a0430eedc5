"""The server side: FedAvg, with the global model evaluated on the held-out test set."""

from __future__ import annotations

from keras_digits import task
from pollinate import Arrays, Config, FedAvg, Metrics, Sampling, ServerApp, Validation
from pollinate.frameworks.keras import get_arrays, set_arrays


def server_fn(run_config: Config) -> ServerApp:
    _, _, x_test, y_test = task.load_data(int(run_config["data-seed"]))
    # The server's own model: its initial weights start the run, and it scores each round's
    # global model. Only the run loop's thread uses it.
    model = task.build_model(int(run_config["hidden-units"]), float(run_config["learning-rate"]))

    def evaluate_test_set(round: int, arrays: Arrays) -> tuple[float, Metrics]:
        set_arrays(model, arrays)
        results = model.evaluate(x_test, y_test, batch_size=256, verbose=0, return_dict=True)
        return float(results["loss"]), {"accuracy": float(results["accuracy"])}

    def fit_config(round: int) -> Config:
        return {"round": round}  # clients shuffle with it: a seeded run repeats exactly

    strategy = FedAvg(
        evaluate_fn=evaluate_test_set,
        on_fit_config_fn=fit_config,
        sampling=Sampling(fraction_fit=float(run_config["fraction-fit"]), fraction_evaluate=0.5),
    )
    validation = Validation(anomaly_threshold=float(run_config["anomaly-threshold"]) or None)
    return ServerApp(
        strategy,
        num_rounds=int(run_config["num-rounds"]),
        initial_arrays=get_arrays(model),
        validation=validation,
    )
