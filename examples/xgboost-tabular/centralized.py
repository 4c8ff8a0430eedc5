"""The reference: the same trees trained on all training data in one place.

Run: python examples/xgboost-tabular/centralized.py
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import xgboost as xgb

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from xgboost_tabular import task  # noqa: E402

from pollinate.frameworks.xgboost import booster_to_arrays  # noqa: E402


def main() -> None:
    tool = tomllib.loads((HERE / "pyproject.toml").read_text())["tool"]["pollinate"]
    cfg = tool["config"]
    # As many trees as the federated run grows: bagging adds clients x local-rounds a round.
    trees = cfg["num-rounds"] * tool["simulation"]["clients"] * cfg["local-rounds"]
    x_train, y_train, x_test, y_test = task.load_data(cfg["data-seed"])
    booster = xgb.train(task.params(cfg), xgb.DMatrix(x_train, label=y_train), trees)
    loss, metrics = task.evaluate(booster_to_arrays(booster), x_test, y_test)
    print(
        f"centralized reference ({trees} trees, all training data in one place): test AUC "
        f"{metrics['auc']:.4f}, accuracy {metrics['accuracy']:.4f}, log loss {loss:.4f}"
    )


if __name__ == "__main__":
    main()
