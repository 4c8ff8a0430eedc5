"""sklearnclassic: the model and the data (scikit-learn's breast_cancer, no download)."""

import numpy as np
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression

N_FEATURES = 30


def load_data(partition_id: int, num_partitions: int):
    """This partition's share of breast_cancer, standardized, split 80/20 train/test."""
    X, y = load_breast_cancer(return_X_y=True)
    X = (X - X.mean(axis=0)) / X.std(axis=0)
    order = np.random.default_rng(42).permutation(len(y))
    part = np.array_split(order, num_partitions)[partition_id]
    split = int(0.8 * len(part))
    train, test = part[:split], part[split:]
    return X[train], y[train], X[test], y[test]


def get_model(local_epochs: int) -> LogisticRegression:
    return LogisticRegression(max_iter=local_epochs, warm_start=True)


def get_model_params(model: LogisticRegression):
    return [model.coef_, model.intercept_]


def set_model_params(model: LogisticRegression, params) -> LogisticRegression:
    model.coef_ = params[0]
    model.intercept_ = params[1]
    return model


def set_initial_params(model: LogisticRegression) -> None:
    """Zeros, so that the server and every client start from the same model."""
    model.classes_ = np.array([0, 1])
    model.coef_ = np.zeros((1, N_FEATURES))
    model.intercept_ = np.zeros((1,))
