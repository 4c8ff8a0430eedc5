"""The reference: the same softmax regression trained on all training data in one place.

Run: python examples/quickstart-numpy/centralized.py
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from quickstart_numpy import task  # noqa: E402


def main() -> None:
    cfg = tomllib.loads((HERE / "pyproject.toml").read_text())["tool"]["pollinate"]["config"]
    # As many passes over the data as the federated run makes: rounds x local epochs.
    epochs = cfg["num-rounds"] * cfg["local-epochs"]
    x_train, y_train, x_test, y_test = task.load_data(cfg["data-seed"])
    arrays = task.train(
        task.initial_arrays(),
        x_train,
        y_train,
        epochs=epochs,
        batch_size=cfg["batch-size"],
        lr=cfg["learning-rate"],
        seed=0,
    )
    loss, accuracy = task.evaluate(arrays, x_test, y_test)
    print(
        f"centralized reference (same model and settings, all data in one place, {epochs} "
        f"epochs): test accuracy {accuracy:.4f}, loss {loss:.4f}"
    )


if __name__ == "__main__":
    main()
