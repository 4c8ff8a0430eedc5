"""The model, the data, its split across hospitals and the sums they share: scikit-learn and
NumPy, no pollinate run code here."""

from __future__ import annotations

import warnings
from functools import lru_cache

import numpy as np
from sklearn.datasets import load_breast_cancer
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from threadpoolctl import threadpool_limits

from pollinate import Arrays
from pollinate.datasets import dirichlet
from pollinate.frameworks.sklearn import evaluate, initial_arrays, set_arrays

NUM_FEATURES = 30
CLASSES = (0, 1)  # scikit-learn's encoding: 0 = malignant, 1 = benign

# Each round stops L-BFGS after a few iterations on purpose: the warning says just that.
warnings.filterwarnings("ignore", category=ConvergenceWarning)
# Hospitals train side by side in threads on few cores: one BLAS thread each, or OpenBLAS
# threads fight over the cores and a millisecond fit takes seconds.
threadpool_limits(1, user_api="blas")


def make_model(regularization: float = 1.0) -> LogisticRegression:
    return LogisticRegression(C=regularization)


def hospital_model(regularization: float, patients: int, federation: int) -> LogisticRegression:
    """A hospital's model, its penalty its share of the pooled model's.

    LogisticRegression minimizes ``C * (sum of the losses) + ||w||^2 / 2``: the penalty comes
    once per fit, whatever the number of patients. With C unchanged, five hospitals would add
    five penalties and shrink the small hospitals' models most. With ``C_k = C * N / n_k``,
    hospital k minimizes ``N / n_k`` times ``C * (its patients' losses) + (n_k / N) ||w||^2
    / 2``; weighted by patients, as FedAvg weights them, these add up to the objective of
    one model fit with ``C`` on all ``N`` patients.
    """
    return make_model(regularization * federation / patients)


@lru_cache(maxsize=1)
def load_data(seed: int = 42) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """569 biopsies (30 features of the cell nuclei), 25% held out as the test set. Raw
    features: each hospital standardizes with the scaler the federation agreed on."""
    x, y = load_breast_cancer(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, random_state=seed, stratify=y
    )
    return x_train, y_train, x_test, y_test


@lru_cache(maxsize=8)
def hospitals(num_hospitals: int, alpha: float, min_patients: int, seed: int) -> list[np.ndarray]:
    """The training set split across hospitals with Dirichlet(alpha) label skew: sizes and
    the share of malignant cases differ from hospital to hospital."""
    _, y_train, _, _ = load_data(seed)
    return dirichlet(y_train, num_hospitals, alpha=alpha, seed=seed, min_size=min_patients)


def feature_sums(x: np.ndarray) -> np.ndarray:
    """What a hospital shares to build the scaler: its number of patients, and per feature
    the sum and the sum of squares. Aggregates, not records."""
    return np.stack([np.full(x.shape[1], float(len(x))), x.sum(axis=0), (x**2).sum(axis=0)])


def scaler_from_sums(total: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pooled mean and standard deviation of every feature, from the hospitals' summed
    ``feature_sums``."""
    n, sums, squares = total
    mean = sums / n
    return mean, np.sqrt(np.maximum(squares / n - mean**2, 1e-12))


@lru_cache(maxsize=1)
def shared_sums(seed: int = 42) -> np.ndarray:
    """What the federation agrees on before round 1: the hospitals' ``feature_sums`` added
    up, from which every hospital (and the test set) takes the same scaler, and the number
    of patients in the federation. Every training patient is at exactly one hospital, so the
    total is the training set's: this one-process simulation takes it directly."""
    x_train, _, _, _ = load_data(seed)
    return feature_sums(x_train)


def patients(total: np.ndarray) -> int:
    """The number of patients behind summed ``feature_sums``."""
    return int(total[0, 0])


def standardize(x: np.ndarray, total: np.ndarray) -> np.ndarray:
    """Standardize with the pooled mean and standard deviation behind ``total``."""
    mean, std = scaler_from_sums(total)
    return (x - mean) / std


def score(arrays: Arrays, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Log loss and accuracy of the logistic regression with weights ``arrays``."""
    model = make_model()
    initial_arrays(model, NUM_FEATURES, CLASSES)
    set_arrays(model, arrays)
    loss, _, metrics = evaluate(model, x, y)
    return loss, float(metrics["accuracy"])
