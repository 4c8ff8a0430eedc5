"""The data (scikit-learn's digits, no download), the model and its parameters."""

import numpy as np
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss

N_CLASSES, N_FEATURES = 10, 64


def load_partition(partition_id: int, num_partitions: int):
    """This client's share of the training data, and its own test data."""
    (X_train, y_train), (X_test, y_test) = load_data()
    train = np.array_split(np.arange(len(y_train)), num_partitions)[partition_id]
    test = np.array_split(np.arange(len(y_test)), num_partitions)[partition_id]
    return (X_train[train], y_train[train]), (X_test[test], y_test[test])


def load_data():
    """digits, scaled to [0, 1], shuffled once with a fixed seed, 80/20 train/test."""
    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    order = np.random.default_rng(7).permutation(len(y))
    X, y = X[order], y[order]
    split = int(0.8 * len(y))
    return (X[:split], y[:split]), (X[split:], y[split:])


def get_model() -> LogisticRegression:
    return LogisticRegression(max_iter=3, warm_start=True)


def get_model_parameters(model: LogisticRegression):
    return [model.coef_, model.intercept_]


def set_model_params(model: LogisticRegression, params) -> LogisticRegression:
    model.coef_ = params[0]
    model.intercept_ = params[1]
    return model


def set_initial_params(model: LogisticRegression) -> None:
    """Zeros: the server and every client start from the same model."""
    model.classes_ = np.arange(N_CLASSES)
    model.coef_ = np.zeros((N_CLASSES, N_FEATURES))
    model.intercept_ = np.zeros((N_CLASSES,))


def evaluate(model: LogisticRegression, X, y):
    """(log loss, accuracy) of the model on (X, y)."""
    loss = log_loss(y, model.predict_proba(X), labels=np.arange(N_CLASSES))
    return loss, model.score(X, y)
