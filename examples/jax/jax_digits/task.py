"""The model, the data and the training loop: Flax and optax, nothing federated here."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from pollinate.datasets import dirichlet
from pollinate.frameworks import jax as jax_adapter

NUM_FEATURES, NUM_CLASSES = 64, 10


class MLP(nn.Module):
    """One hidden layer of 64 ReLU units, then one logit per digit."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.relu(nn.Dense(64)(x))
        return nn.Dense(NUM_CLASSES)(x)


MODEL = MLP()


def apply(params: Any, x: jax.Array) -> jax.Array:
    """Logits for ``x``. A module-level function, so every client shares one compiled step."""
    return MODEL.apply({"params": params}, x)  # type: ignore[return-value]


@lru_cache(maxsize=1)
def initial_params(seed: int = 0) -> Any:
    """The model's starting weights: ``{"Dense_0": {"kernel", "bias"}, "Dense_1": ...}``."""
    return MODEL.init(jax.random.key(seed), jnp.zeros((1, NUM_FEATURES)))["params"]


@lru_cache(maxsize=8)
def optimizer(lr: float) -> optax.GradientTransformation:
    """Adam, built once per learning rate: the compiled training step is keyed on it."""
    return optax.adam(lr)


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


def evaluate(params: Any, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Cross-entropy loss and accuracy."""
    loss, _, metrics = jax_adapter.evaluate(params, apply, x, y)
    return loss, float(metrics["accuracy"])
