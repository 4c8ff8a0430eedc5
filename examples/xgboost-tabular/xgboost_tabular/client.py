"""The client: boosts trees on one client's share of the training set."""

from __future__ import annotations

from pollinate import Context
from pollinate.frameworks.xgboost import XgbBaggingClient, XgbClient, XgbCyclicClient
from xgboost_tabular import task


def client_fn(context: Context) -> XgbClient:
    cfg = context.run_config
    train, valid = task.client_data(
        context.partition_id, context.num_partitions, int(cfg["data-seed"])
    )
    if cfg["mode"] == "cyclic":  # sends back the whole booster
        rounds = int(cfg["cyclic-local-rounds"])
        return XgbCyclicClient(train, valid, task.params(cfg), local_rounds=rounds)
    # bagging: sends back only the trees it added
    rounds = int(cfg["local-rounds"])
    return XgbBaggingClient(train, valid, task.params(cfg), local_rounds=rounds)
