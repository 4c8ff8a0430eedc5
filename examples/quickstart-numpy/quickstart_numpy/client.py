"""The client: trains on one client's partition of the digits training set."""

from __future__ import annotations

import numpy as np

from pollinate import Arrays, Client, Config, Context, Metrics
from pollinate.client import proximal_mu
from pollinate.simulation import flip_labels
from quickstart_numpy import task


class DigitsClient(Client):
    def __init__(
        self,
        train: tuple[np.ndarray, np.ndarray],
        val: tuple[np.ndarray, np.ndarray],
        partition_id: int,
    ) -> None:
        self.x_train, self.y_train = train
        self.x_val, self.y_val = val
        self.partition_id = partition_id

    def fit(self, arrays: Arrays, config: Config) -> tuple[Arrays, int, Metrics]:
        new = task.train(
            arrays,
            self.x_train,
            self.y_train,
            epochs=int(config["local-epochs"]),
            batch_size=int(config["batch-size"]),
            lr=float(config["learning-rate"]),
            seed=self.partition_id + int(config["round"]),
            proximal_mu=proximal_mu(config),  # FedProx sends it; 0 otherwise
        )
        loss, accuracy = task.evaluate(new, self.x_train, self.y_train)
        return new, len(self.x_train), {"train_loss": loss, "train_accuracy": accuracy}

    def evaluate(self, arrays: Arrays, config: Config) -> tuple[float, int, Metrics]:
        loss, accuracy = task.evaluate(arrays, self.x_val, self.y_val)
        return loss, len(self.x_val), {"accuracy": accuracy}


def client_fn(context: Context) -> DigitsClient:
    cfg = context.run_config
    x_train, y_train, _, _ = task.load_data(int(cfg["data-seed"]))
    parts = task.partitions(
        context.num_partitions, float(cfg["dirichlet-alpha"]), int(cfg["data-seed"])
    )
    idx = parts[context.partition_id]
    x, y = x_train[idx], y_train[idx]
    # Each client keeps 20% of its own data for federated evaluation.
    split = int(0.8 * len(x))
    y_fit = y[:split]
    if context.node_config.get("attack") == "label-flip":
        # An adversary (`pollinate run --adversaries 0.3 --attack label-flip`) poisons the
        # labels it trains on; it evaluates honestly, so only training is attacked.
        y_fit = flip_labels(y_fit, task.NUM_CLASSES)
    return DigitsClient((x[:split], y_fit), (x[split:], y[split:]), context.partition_id)
