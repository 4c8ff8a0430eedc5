"""A client of Flower's classic tutorial: a NumPyClient on one partition of digits, started
with start_numpy_client."""

import argparse
import warnings

from classictask import task
from flwr.client import NumPyClient, start_numpy_client

parser = argparse.ArgumentParser()
parser.add_argument("--server-address", default="127.0.0.1:8080")
parser.add_argument("--partition-id", type=int, required=True)
parser.add_argument("--num-partitions", type=int, default=2)
args = parser.parse_args()

(X_train, y_train), (X_test, y_test) = task.load_partition(args.partition_id, args.num_partitions)
model = task.get_model()
task.set_initial_params(model)


class DigitsClient(NumPyClient):
    def get_parameters(self, config):
        return task.get_model_parameters(model)

    def fit(self, parameters, config):
        task.set_model_params(model, parameters)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a few iterations: lbfgs has not converged
            model.fit(X_train, y_train)
        print(f"Training finished for round {config['server_round']}")
        return task.get_model_parameters(model), len(X_train), {}

    def evaluate(self, parameters, config):
        task.set_model_params(model, parameters)
        loss, accuracy = task.evaluate(model, X_test, y_test)
        return loss, len(X_test), {"accuracy": accuracy}


start_numpy_client(server_address=args.server_address, client=DigitsClient())
