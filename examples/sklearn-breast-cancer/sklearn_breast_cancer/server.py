"""The server side: FedAvg over the hospitals' models, scored on the held-out test set."""

from __future__ import annotations

from pollinate import Arrays, Config, FedAvg, Metrics, Sampling, ServerApp, Validation
from pollinate.frameworks.sklearn import initial_arrays
from sklearn_breast_cancer import task


def server_fn(run_config: Config) -> ServerApp:
    seed = int(run_config["data-seed"])
    _, _, x_test, y_test = task.load_data(seed)
    x_test = task.standardize(x_test, task.shared_sums(seed))

    def evaluate_test_set(round: int, arrays: Arrays) -> tuple[float, Metrics]:
        loss, accuracy = task.score(arrays, x_test, y_test)
        return loss, {"accuracy": accuracy}

    return ServerApp(
        FedAvg(
            evaluate_fn=evaluate_test_set,
            sampling=Sampling(fraction_fit=1.0, fraction_evaluate=1.0),
        ),
        num_rounds=int(run_config["num-rounds"]),
        # Every weight starts at zero: the model says 50% for every patient.
        initial_arrays=initial_arrays(task.make_model(), task.NUM_FEATURES, task.CLASSES),
        validation=Validation(anomaly_threshold=float(run_config["anomaly-threshold"]) or None),
    )
