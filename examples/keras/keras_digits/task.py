"""The model and the data: Keras and scikit-learn, nothing federated here."""

from __future__ import annotations

from functools import lru_cache

import keras
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

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
    """The training set split across clients with Dirichlet(alpha) label skew; each client
    gets at least 10 examples, so it has some to train on and some to evaluate on."""
    _, y_train, _, _ = load_data(seed)
    return dirichlet(y_train, num_partitions, alpha=alpha, seed=seed, min_size=10)


def build_model(hidden: int, learning_rate: float, seed: int = 0) -> keras.Model:
    """An MLP with batch normalization, compiled for integer labels.

    Every client builds its own (Keras models are not shared between threads); the seed
    fixes the initial weights, which only the server's copy contributes.
    """
    model = keras.Sequential(
        [
            keras.Input((NUM_FEATURES,)),
            keras.layers.Dense(
                hidden, kernel_initializer=keras.initializers.GlorotUniform(seed=seed)
            ),
            keras.layers.BatchNormalization(),
            keras.layers.Activation("relu"),
            keras.layers.Dense(
                NUM_CLASSES,
                activation="softmax",
                kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 1),
            ),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate, momentum=0.9),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model
