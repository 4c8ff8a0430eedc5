"""The model, the data and the training loop: plain NumPy, nothing federated here."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from pollinate import Arrays
from pollinate.client import proximal_gradient
from pollinate.datasets import dirichlet

NUM_FEATURES, NUM_CLASSES = 64, 10


@lru_cache(maxsize=1)
def load_data(seed: int = 42) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Digits (8x8 images, 10 classes), scaled to [0, 1]; 25% held out as the test set."""
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, random_state=seed, stratify=y
    )
    return x_train, y_train, x_test, y_test


@lru_cache(maxsize=8)
def partitions(num_partitions: int, alpha: float, seed: int) -> list[np.ndarray]:
    """The training set split across clients with Dirichlet(alpha) label skew."""
    _, y_train, _, _ = load_data(seed)
    return dirichlet(y_train, num_partitions, alpha=alpha, seed=seed)


def initial_arrays() -> Arrays:
    return Arrays(
        {
            "weight": np.zeros((NUM_FEATURES, NUM_CLASSES), np.float32),
            "bias": np.zeros(NUM_CLASSES, np.float32),
        }
    )


def predict_proba(arrays: Arrays, x: np.ndarray) -> np.ndarray:
    logits = x @ arrays["weight"] + arrays["bias"]
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


def train(
    arrays: Arrays,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    proximal_mu: float = 0.0,
) -> Arrays:
    """Mini-batch SGD on the cross-entropy loss, plus FedProx's proximal term when
    ``proximal_mu`` > 0 (it pulls the weights towards the ``arrays`` training started from);
    returns new arrays."""
    w, b = arrays["weight"].copy(), arrays["bias"].copy()
    rng = np.random.default_rng(seed)
    onehot = np.eye(NUM_CLASSES, dtype=np.float32)[y]
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for start in range(0, len(x), batch_size):
            idx = order[start : start + batch_size]
            p = predict_proba(Arrays({"weight": w, "bias": b}), x[idx])
            grad = (p - onehot[idx]) / len(idx)
            pull = proximal_gradient({"weight": w, "bias": b}, arrays, proximal_mu)
            w -= lr * (x[idx].T @ grad + pull["weight"])
            b -= lr * (grad.sum(axis=0) + pull["bias"])
    return Arrays({"weight": w, "bias": b})


def evaluate(arrays: Arrays, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Cross-entropy loss and accuracy."""
    p = predict_proba(arrays, x)
    loss = float(-np.log(p[np.arange(len(y)), y] + 1e-12).mean())
    accuracy = float((p.argmax(axis=1) == y).mean())
    return loss, accuracy
