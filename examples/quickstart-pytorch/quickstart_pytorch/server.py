"""The server side: FedAvg (FedProx when proximal-mu > 0), with the global model evaluated on
the held-out test set."""

from __future__ import annotations

from pollinate import Arrays, Config, FedAvg, FedProx, Metrics, Sampling, ServerApp, Validation
from pollinate.frameworks.pytorch import evaluate, set_arrays
from quickstart_pytorch import task


def server_fn(run_config: Config) -> ServerApp:
    _, _, x_test, y_test = task.load_data(int(run_config["data-seed"]))
    test_loader = task.loader(x_test, y_test, batch_size=256)
    model = task.Net()

    def evaluate_test_set(round: int, arrays: Arrays) -> tuple[float, Metrics]:
        set_arrays(model, arrays)
        loss, _, metrics = evaluate(model, test_loader)
        return loss, metrics

    sampling = Sampling(fraction_fit=float(run_config["fraction-fit"]), fraction_evaluate=0.5)
    mu = float(run_config["proximal-mu"])
    if mu > 0:
        strategy = FedProx(proximal_mu=mu, sampling=sampling, evaluate_fn=evaluate_test_set)
    else:
        strategy = FedAvg(sampling=sampling, evaluate_fn=evaluate_test_set)
    validation = Validation(
        anomaly_threshold=float(run_config["anomaly-threshold"]) or None,
        max_norm=float(run_config["max-norm"]) or None,
    )
    return ServerApp(
        strategy,
        num_rounds=int(run_config["num-rounds"]),
        initial_arrays=task.initial_arrays(int(run_config["model-seed"])),
        validation=validation,
    )
