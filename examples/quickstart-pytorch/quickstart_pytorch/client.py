"""The client: trains the CNN on one client's partition of the digits training set."""

from __future__ import annotations

import torch

from pollinate import Context
from pollinate.frameworks.pytorch import TorchClient
from pollinate.simulation import flip_labels
from quickstart_pytorch import task


def client_fn(context: Context) -> TorchClient:
    # Virtual clients train in parallel threads: one torch thread each keeps the cores busy
    # without oversubscribing them.
    torch.set_num_threads(1)
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
    batch_size = int(cfg["batch-size"])
    return TorchClient(
        task.Net,
        task.loader(x[:split], y_fit, batch_size, shuffle_seed=context.partition_id),
        task.loader(x[split:], y[split:], batch_size),
        epochs=int(cfg["local-epochs"]),
        optimizer_fn=lambda params: torch.optim.SGD(
            params, lr=float(cfg["learning-rate"]), momentum=0.9
        ),
    )
