"""The server of Flower's classic tutorial: a FedAvg with centralized evaluation, started
with start_server. (Its last lines write the history for the tests.)"""

import json
import sys

from classictask import task
from flwr.server import ServerConfig, start_server
from flwr.server.strategy import FedAvg
from sklearn.linear_model import LogisticRegression


def fit_round(server_round: int):
    """Send the round number to the clients."""
    return {"server_round": server_round}


def get_evaluate_fn(model: LogisticRegression):
    """Evaluate the global model on the whole test set, on the server."""
    _, (X_test, y_test) = task.load_data()

    def evaluate(server_round, parameters, config):
        task.set_model_params(model, parameters)
        loss, accuracy = task.evaluate(model, X_test, y_test)
        return loss, {"accuracy": accuracy}

    return evaluate


def weighted_average(metrics):
    examples = [num_examples for num_examples, _ in metrics]
    accuracies = [num_examples * m["accuracy"] for num_examples, m in metrics]
    return {"accuracy": sum(accuracies) / sum(examples)}


if __name__ == "__main__":
    address, clients, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    model = task.get_model()
    task.set_initial_params(model)
    strategy = FedAvg(
        min_fit_clients=clients,
        min_evaluate_clients=clients,
        min_available_clients=clients,
        evaluate_fn=get_evaluate_fn(model),
        on_fit_config_fn=fit_round,
        evaluate_metrics_aggregation_fn=weighted_average,
    )
    hist = start_server(
        server_address=address, strategy=strategy, config=ServerConfig(num_rounds=3)
    )
    with open(out, "w") as f:
        json.dump(vars(hist), f)
