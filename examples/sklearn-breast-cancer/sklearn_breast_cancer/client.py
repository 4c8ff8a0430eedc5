"""The client: one hospital, training on its own patients; no record leaves it."""

from __future__ import annotations

from functools import partial

from pollinate import Context
from pollinate.frameworks.sklearn import SklearnClient
from sklearn_breast_cancer import task


def client_fn(context: Context) -> SklearnClient:
    cfg = context.run_config
    seed = int(cfg["data-seed"])
    x_train, y_train, _, _ = task.load_data(seed)
    parts = task.hospitals(
        context.num_partitions, float(cfg["dirichlet-alpha"]), int(cfg["min-patients"]), seed
    )
    idx = parts[context.partition_id]
    total = task.shared_sums(seed)
    x, y = task.standardize(x_train[idx], total), y_train[idx]
    # Each hospital keeps 20% of its patients to evaluate the global model on.
    cut = int(0.8 * len(x))
    return SklearnClient(
        partial(task.hospital_model, float(cfg["regularization"]), len(idx), task.patients(total)),
        (x[:cut], y[:cut]),
        (x[cut:], y[cut:]),
        classes=task.CLASSES,
        local_epochs=int(cfg["local-epochs"]),
    )
