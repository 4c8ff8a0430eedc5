"""The client: trains on one client's partition of the digits training set."""

from __future__ import annotations

from pollinate import Arrays, Client, Config, Context, Metrics
from quickstart_numpy import task


class DigitsClient(Client):
    def __init__(self, x, y, partition_id: int) -> None:
        # Each client keeps 20% of its own data for federated evaluation.
        split = int(0.8 * len(x))
        self.x_train, self.y_train = x[:split], y[:split]
        self.x_val, self.y_val = x[split:], y[split:]
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
    return DigitsClient(x_train[idx], y_train[idx], context.partition_id)
