"""The references: the same logistic regression trained on all hospitals' patients pooled in
one place (what federation tries to match), and on each hospital's patients alone (what a
hospital gets without it). Both are scored on the same held-out test set.

Run: python examples/sklearn-breast-cancer/centralized.py
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import numpy as np
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from sklearn_breast_cancer import task  # noqa: E402


def accuracy(
    x: np.ndarray, y: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, c: float
) -> float:
    # Alone, a site scales by its own statistics; trained to convergence.
    model = make_pipeline(StandardScaler(), task.make_model(c).set_params(max_iter=1000))
    return float(model.fit(x, y).score(x_test, y_test))


def main() -> None:
    cfg = tomllib.loads((HERE / "pyproject.toml").read_text())["tool"]["pollinate"]
    config, clients = cfg["config"], cfg["simulation"]["clients"]
    c = config["regularization"]
    x_train, y_train, x_test, y_test = task.load_data(config["data-seed"])
    pooled = accuracy(x_train, y_train, x_test, y_test, c)
    print(f"all {len(y_train)} training patients pooled: test accuracy {pooled:.4f}")
    parts = task.hospitals(
        clients, config["dirichlet-alpha"], config["min-patients"], config["data-seed"]
    )
    for k, idx in enumerate(parts):
        malignant = float(np.mean(y_train[idx] == 0))
        # Alone, the hospital trains on the 80% its client trains on in the federated run.
        fit = idx[: int(0.8 * len(idx))]
        alone = (
            f"test accuracy {accuracy(x_train[fit], y_train[fit], x_test, y_test, c):.4f}"
            if len(np.unique(y_train[fit])) == 2
            else "cannot train: one diagnosis only"
        )
        print(
            f"hospital {k}: {len(idx):3d} patients ({malignant:3.0%} malignant), alone on "
            f"{len(fit):3d} of them: {alone}"
        )


if __name__ == "__main__":
    main()
