"""The model and the data: plain PyTorch, nothing federated here.

Training and evaluation are the adapter's ready loop (``pollinate.frameworks.pytorch.train``
and ``evaluate``), which any PyTorch script can call as it is.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from pollinate import Arrays
from pollinate.datasets import dirichlet
from pollinate.frameworks.pytorch import get_arrays

NUM_CLASSES = 10


class Net(nn.Module):
    """Two conv layers on 1x8x8 images; the first has BatchNorm, whose running statistics and
    int64 step counter are federated like the weights."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 4x4 -> 2x2
        )
        self.classifier = nn.Linear(32 * 2 * 2, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


@lru_cache(maxsize=1)
def load_data(seed: int = 42) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Digits as 1x8x8 images scaled to [0, 1]; 25% held out as the test set."""
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, random_state=seed, stratify=y
    )
    return x_train, y_train, x_test, y_test


@lru_cache(maxsize=8)
def partitions(num_partitions: int, alpha: float, seed: int) -> list[np.ndarray]:
    """The training set split across clients with Dirichlet(alpha) label skew."""
    _, y_train, _, _ = load_data(seed)
    return dirichlet(y_train, num_partitions, alpha=alpha, seed=seed)


def loader(
    x: np.ndarray, y: np.ndarray, batch_size: int, shuffle_seed: int | None = None
) -> DataLoader[tuple[torch.Tensor, ...]]:
    """Batches of (images, labels); shuffled by its own seeded generator when a seed is
    given, so clients training in parallel threads do not share torch's global RNG."""
    data = TensorDataset(torch.from_numpy(x), torch.from_numpy(y).long())
    if shuffle_seed is None:
        return DataLoader(data, batch_size=batch_size)
    generator = torch.Generator().manual_seed(shuffle_seed)
    return DataLoader(data, batch_size=batch_size, shuffle=True, generator=generator)


def initial_arrays(seed: int) -> Arrays:
    """The starting global model: a seeded Net's weights and buffers."""
    torch.manual_seed(seed)
    return get_arrays(Net())
