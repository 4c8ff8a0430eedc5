"""sklearnclassic: a Flower / scikit-learn app."""

import warnings

from flwr.client import ClientApp, NumPyClient
from flwr.common import Context
from sklearn.metrics import log_loss

from sklearnclassic.task import (
    get_model,
    get_model_params,
    load_data,
    set_initial_params,
    set_model_params,
)


class FlowerClient(NumPyClient):
    def __init__(self, model, X_train, y_train, X_test, y_test):
        self.model = model
        self.X_train, self.y_train = X_train, y_train
        self.X_test, self.y_test = X_test, y_test

    def fit(self, parameters, config):
        set_model_params(self.model, parameters)
        with warnings.catch_warnings():
            # max_iter is a few local epochs: lbfgs warns that it has not converged
            warnings.simplefilter("ignore")
            self.model.fit(self.X_train, self.y_train)
        return get_model_params(self.model), len(self.X_train), {}

    def evaluate(self, parameters, config):
        set_model_params(self.model, parameters)
        loss = log_loss(self.y_test, self.model.predict_proba(self.X_test))
        accuracy = self.model.score(self.X_test, self.y_test)
        return loss, len(self.X_test), {"accuracy": accuracy}


def client_fn(context: Context):
    partition_id = context.node_config["partition-id"]
    num_partitions = context.node_config["num-partitions"]
    X_train, y_train, X_test, y_test = load_data(partition_id, num_partitions)
    model = get_model(context.run_config["local-epochs"])
    set_initial_params(model)
    return FlowerClient(model, X_train, y_train, X_test, y_test).to_client()


app = ClientApp(client_fn=client_fn)
