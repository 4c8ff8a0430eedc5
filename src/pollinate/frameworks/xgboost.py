"""XGBoost adapter: a booster as ``Arrays`` and back, and ready clients for federated boosting.

A booster travels as its JSON model (``Booster.save_raw("json")``) in one uint8 array named
``"booster"``; a run starts from the empty array (no trees yet), so round 1's clients train
from scratch. The hub merges boosters as JSON and needs no xgboost: pair the clients here with
``pollinate.strategy.FedXgbBagging`` or ``FedXgbCyclic``::

    from pollinate.frameworks.xgboost import XgbBaggingClient

    def client_fn(context):
        train, valid = load_partition(context.partition_id)  # two xgboost.DMatrix
        return XgbBaggingClient(train, valid, {"objective": "binary:logistic"}, local_rounds=1)

- ``XgbBaggingClient`` boosts ``local_rounds`` more trees on the global model and sends back
  only those new trees, which the hub appends to the global model.
- ``XgbCyclicClient`` does the same and sends back the whole booster, which becomes the
  global model.

Both evaluate a classifier on the validation split: log loss, ``auc`` and ``accuracy`` for
``binary:logistic``, log loss and ``accuracy`` for ``multi:softprob`` (override ``evaluate``
for other objectives).

>>> arrays = empty_arrays()
>>> arrays["booster"].dtype, booster_from_arrays(arrays) is None
(dtype('uint8'), True)
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xgboost as xgb

from pollinate.checks import integer
from pollinate.client.client import Client
from pollinate.records import Arrays, Config, Metrics

__all__ = [
    "BOOSTER",
    "XgbBaggingClient",
    "XgbClient",
    "XgbCyclicClient",
    "binary_metrics",
    "booster_from_arrays",
    "booster_to_arrays",
    "empty_arrays",
    "multiclass_metrics",
    "save_native",
]

BOOSTER = "booster"
"""The name of the one array a booster travels in."""


def empty_arrays() -> Arrays:
    """The model a run starts from: no trees yet (an empty byte array)."""
    return Arrays({BOOSTER: np.zeros(0, np.uint8)})


def booster_to_arrays(booster: xgb.Booster) -> Arrays:
    """The booster's JSON model as one uint8 array named ``"booster"``."""
    return Arrays({BOOSTER: np.frombuffer(bytes(booster.save_raw("json")), np.uint8)})


def booster_from_arrays(arrays: Mapping[str, np.ndarray]) -> xgb.Booster | None:
    """The booster in ``arrays``, or None for the empty model a run starts from.

    Raises ValueError, naming what arrived, when ``arrays`` hold no booster.
    """
    array = arrays.get(BOOSTER)
    if len(arrays) != 1 or array is None or array.dtype != np.uint8 or array.ndim != 1:
        raise ValueError(
            f"expected one uint8 array {BOOSTER!r} holding a booster, got "
            f"{_describe(arrays)}.\nHint: start the run from empty_arrays() (ServerApp("
            "initial_arrays=...)) and run it with FedXgbBagging or FedXgbCyclic."
        )
    if array.size == 0:
        return None
    try:
        return xgb.Booster(model_file=bytearray(array.tobytes()))
    except xgb.core.XGBoostError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ValueError(
            f"the {array.size} bytes in {BOOSTER!r} are not an XGBoost model ({first}).\n"
            "Hint: send boosters with booster_to_arrays(booster)."
        ) from None


def save_native(arrays: Mapping[str, np.ndarray], path: str | Path) -> Path:
    """Write the booster in ``arrays`` (a run's ``model.npz``: ``pollinate.load_arrays``) with
    ``Booster.save_model``: JSON for ``.json``, UBJSON for ``.ubj``, the file
    ``xgboost.Booster(model_file=path)`` reads. ValueError for the empty model (no trees)."""
    booster = booster_from_arrays(arrays)
    if booster is None:
        raise ValueError(
            "save_native: the arrays hold the empty model a run starts from, no trees.\n"
            "Hint: save the model of a run that has applied a round"
        )
    booster.save_model(str(path))
    return Path(path)


def binary_metrics(booster: xgb.Booster | None, data: xgb.DMatrix) -> tuple[float, Metrics]:
    """Log loss, ``auc`` and ``accuracy`` of a binary classifier on ``data`` (labels 0/1).

    The empty model predicts 0.5 everywhere. ``auc`` is left out when ``data`` holds one
    class only, where it is undefined.
    """
    y = data.get_label()
    p = np.full(len(y), 0.5) if booster is None else booster.predict(data).astype(np.float64)
    if p.shape != y.shape:
        raise ValueError(
            f"the booster predicts {p.shape[1:]} values per example, not one probability.\n"
            "Hint: binary_metrics scores binary:logistic boosters; override evaluate for "
            "other objectives."
        )
    q = np.clip(p, 1e-7, 1 - 1e-7)
    loss = float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q))) if len(y) else 0.0
    metrics: Metrics = {"accuracy": float(np.mean((p > 0.5) == (y > 0.5))) if len(y) else 0.0}
    auc = _auc(y > 0.5, p)
    if auc is not None:
        metrics["auc"] = auc
    return loss, metrics


def multiclass_metrics(
    booster: xgb.Booster | None, data: xgb.DMatrix, num_class: int
) -> tuple[float, Metrics]:
    """Log loss and ``accuracy`` of a ``multi:softprob`` classifier on ``data`` (labels
    0..num_class-1). The empty model predicts every class alike."""
    y = data.get_label().astype(np.int64)
    if booster is None:
        p = np.full((len(y), num_class), 1.0 / num_class)
    else:
        p = booster.predict(data).astype(np.float64)
    if p.shape != (len(y), num_class):
        raise ValueError(
            f"the booster predicts {p.shape[1:]} values per example, not {num_class} class "
            "probabilities.\nHint: multiclass_metrics scores multi:softprob boosters."
        )
    if not len(y):
        return 0.0, {"accuracy": 0.0}
    loss = float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-7, None))))
    return loss, {"accuracy": float(np.mean(p.argmax(axis=1) == y))}


class XgbClient(Client):
    """Boosts ``local_rounds`` more trees on the global booster with the client's data.

    Args:
        train: the client's training data, with labels.
        valid: its validation data, which ``evaluate`` scores the global model on.
        params: XGBoost training parameters (``objective``, ``eta``, ``max_depth``...), the
            same on every client.
        local_rounds: boosting rounds per fit, each adding a tree (per class and parallel
            tree).

    Subclasses say what travels back (``reply``): ``XgbBaggingClient`` and
    ``XgbCyclicClient``.
    """

    def __init__(
        self,
        train: xgb.DMatrix,
        valid: xgb.DMatrix,
        params: Mapping[str, Any],
        *,
        local_rounds: int = 1,
    ) -> None:
        hint = "local_rounds=1 adds one tree per round (per class)."
        integer("local_rounds", local_rounds, minimum=1, hint=hint)
        self.train = train
        self.valid = valid
        self.params = dict(params)
        self.local_rounds = local_rounds

    def get_arrays(self, config: Config) -> Arrays:
        return empty_arrays()

    def fit(self, arrays: Arrays, config: Config) -> tuple[Arrays, int, Metrics]:
        start = booster_from_arrays(arrays)
        begin = 0 if start is None else start.num_boosted_rounds()
        history: dict[str, Any] = {}
        booster = xgb.train(
            self.params,
            self.train,
            self.local_rounds,
            evals=[(self.train, "train")],
            evals_result=history,
            verbose_eval=False,
            xgb_model=start,
        )
        # xgboost's own metrics on the training data (logloss for binary:logistic), last round
        metrics: Metrics = {f"train_{k}": float(v[-1]) for k, v in history["train"].items()}
        return self.reply(booster, begin), self.train.num_row(), metrics

    def reply(self, booster: xgb.Booster, begin: int) -> Arrays:
        """What travels back: ``booster`` holds the global model's ``begin`` rounds and this
        fit's rounds after them."""
        raise NotImplementedError

    def evaluate(self, arrays: Arrays, config: Config) -> tuple[float, int, Metrics]:
        booster = booster_from_arrays(arrays)
        if str(self.params.get("objective", "")).startswith("multi:softprob"):
            num_class = int(self.params["num_class"])
            loss, metrics = multiclass_metrics(booster, self.valid, num_class)
        else:
            loss, metrics = binary_metrics(booster, self.valid)
        return loss, self.valid.num_row(), metrics


class XgbBaggingClient(XgbClient):
    """Sends back only the trees it boosted this round (for ``FedXgbBagging``)."""

    def reply(self, booster: xgb.Booster, begin: int) -> Arrays:
        return booster_to_arrays(booster[begin:])


class XgbCyclicClient(XgbClient):
    """Sends back the whole booster, global trees and new ones (for ``FedXgbCyclic``)."""

    def reply(self, booster: xgb.Booster, begin: int) -> Arrays:
        return booster_to_arrays(booster)


def _auc(positive: np.ndarray, score: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney U, ties counted half), or None for one class."""
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    _, inverse, counts = np.unique(score, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    ranks = ((ends - counts + 1 + ends) / 2)[inverse]  # average 1-based rank of each tie group
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _describe(arrays: Mapping[str, np.ndarray]) -> str:
    parts = [f"{name!r}: {a.dtype}{list(a.shape)}" for name, a in arrays.items()]
    return "{" + ", ".join(parts) + "}"
