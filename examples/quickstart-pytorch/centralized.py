"""The reference: the same CNN trained on all training data in one place.

Run: python examples/quickstart-pytorch/centralized.py
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
from quickstart_pytorch import task  # noqa: E402

from pollinate.frameworks.pytorch import evaluate, set_arrays, train  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)  # as each client does: on a small CNN, more threads only wait
    cfg = tomllib.loads((HERE / "pyproject.toml").read_text())["tool"]["pollinate"]["config"]
    # As many passes over the data as the federated run makes: rounds x local epochs.
    epochs = cfg["num-rounds"] * cfg["local-epochs"]
    x_train, y_train, x_test, y_test = task.load_data(cfg["data-seed"])
    model = task.Net()
    set_arrays(model, task.initial_arrays(cfg["model-seed"]))
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg["learning-rate"], momentum=0.9)
    batches = task.loader(x_train, y_train, cfg["batch-size"], shuffle_seed=0)
    train(model, batches, epochs=epochs, optimizer=optimizer)
    loss, _, metrics = evaluate(model, task.loader(x_test, y_test, batch_size=256))
    print(
        f"centralized reference (same model and settings, all data in one place, {epochs} "
        f"epochs): test accuracy {metrics['accuracy']:.4f}, loss {loss:.4f}"
    )


if __name__ == "__main__":
    main()
