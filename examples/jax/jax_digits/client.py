"""The client: trains the MLP on one client's partition of the digits training set."""

from __future__ import annotations

from jax_digits import task
from pollinate import Context
from pollinate.frameworks.jax import JaxClient
from pollinate.simulation import flip_labels


def client_fn(context: Context) -> JaxClient:
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
    return JaxClient(
        task.initial_params(),  # a template: the global arrays are put into its structure
        task.apply,
        (x[:split], y_fit),
        (x[split:], y[split:]),
        optimizer=task.optimizer(float(cfg["learning-rate"])),
        epochs=int(cfg["local-epochs"]),
        batch_size=int(cfg["batch-size"]),
        seed=context.partition_id,
    )
