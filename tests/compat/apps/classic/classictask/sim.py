"""The classic tutorial's app as pollinate runs it in simulation (`pollinate run`): the same
strategy, functions and clients as server.py and client.py, in Flower 1.x's app shapes."""

import warnings

from server import fit_round, get_evaluate_fn, weighted_average

from classictask import task
from pollinate.flower import (
    ClientApp,
    Context,
    FedAvg,
    NumPyClient,
    ServerApp,
    ServerAppComponents,
    ServerConfig,
)

CLIENTS = 2


class DigitsClient(NumPyClient):
    """client.py's client, on the partition the simulation gives."""

    def __init__(self, partition_id: int, num_partitions: int):
        (self.X_train, self.y_train), (self.X_test, self.y_test) = task.load_partition(
            partition_id, num_partitions
        )
        self.model = task.get_model()
        task.set_initial_params(self.model)

    def get_parameters(self, config):
        return task.get_model_parameters(self.model)

    def fit(self, parameters, config):
        task.set_model_params(self.model, parameters)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.model.fit(self.X_train, self.y_train)
        return task.get_model_parameters(self.model), len(self.X_train), {}

    def evaluate(self, parameters, config):
        task.set_model_params(self.model, parameters)
        loss, accuracy = task.evaluate(self.model, self.X_test, self.y_test)
        return loss, len(self.X_test), {"accuracy": accuracy}


def _client(context: Context):
    return DigitsClient(context.partition_id, context.num_partitions).to_client()


def _components(context: Context):
    model = task.get_model()
    task.set_initial_params(model)
    strategy = FedAvg(
        min_fit_clients=CLIENTS,
        min_evaluate_clients=CLIENTS,
        min_available_clients=CLIENTS,
        evaluate_fn=get_evaluate_fn(model),
        on_fit_config_fn=fit_round,
        evaluate_metrics_aggregation_fn=weighted_average,
    )
    rounds = context.run_config["num-rounds"]
    return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=rounds))


client_fn = ClientApp(client_fn=_client)
server_fn = ServerApp(server_fn=_components)
