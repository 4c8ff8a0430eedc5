"""A small run's history and model, as a tracker sees them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pollinate import Arrays, save_arrays
from pollinate.loop.history import History, RoundRecord


def header() -> History:
    return History(
        app="demo",
        seed=7,
        config={"lr": 0.5, "local_epochs": 2},
        app_hash="3f2a",
        strategy="FedAvg",
        num_rounds=2,
        clients=10,
    )


def rounds() -> list[RoundRecord]:
    return [
        RoundRecord(round=0, centralized={"loss": 2.0, "accuracy": 0.1}),
        RoundRecord(
            round=1,
            replies=9,
            failures=1,
            evaluate={"loss": 1.5, "accuracy": 0.5, "odd name\x1b": 3.0, "note": "text"},
            centralized={"loss": 1.0, "accuracy": 0.6},
            fit={"train_loss": 1.2},
        ),
        RoundRecord(round=2, replies=10, evaluate={"loss": float("nan")}),
    ]


def model(directory: Path) -> Path:
    rng = np.random.default_rng(0)
    arrays = Arrays({"fc.weight": rng.normal(size=(4, 3)), "fc.bias": np.zeros(4)})
    return save_arrays(arrays, directory / "model.npz")
