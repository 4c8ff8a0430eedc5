"""Boosted trees as plain data: XGBoost boosters read, checked and merged as JSON.

A booster travels as its JSON model (``Booster.save_raw("json")``), one uint8 array; a run
starts from an empty array (no trees yet). This module reads and edits that JSON with the json
module, so a hub needs no xgboost. A boosted model's margin is the sum of its trees' outputs
(Chen and Guestrin 2016, "XGBoost: A Scalable Tree Boosting System", eq. 1:
``y_hat(x) = sum_k f_k(x)``, on top of ``base_score``), so merging boosters is appending trees:
``F(x) + sum_k f_k(x)``.

Invariants: ``append_trees`` makes a model whose margin is the base's margin plus the margin
of every addition's trees, in the order given, with the boosting rounds of each addition kept
as rounds. ``parse_booster`` passes only what every client can load once merged: a gbtree
booster whose ``tree_info`` and ``iteration_indptr`` match its trees, whose child indices and
split features are in range, and which holds no NaN or Infinity. Nothing here logs or imports
xgboost: each check raises ValueError saying what is wrong, and the caller (a strategy)
decides what becomes of the booster.

>>> parse_booster(b"PK zip")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
ValueError: the booster bytes start with b'PK zip': not a JSON model.
Hint: ...
"""

from __future__ import annotations

import copy
import itertools
import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from pollinate.records import Arrays
from pollinate.text import inert

BOOSTER = "booster"
"""The name of the one array a booster travels in (``pollinate.frameworks.xgboost`` agrees)."""

JsonModel = dict[str, Any]
"""A booster's JSON model, parsed: ``{"learner": {...}, "version": [...]}``."""

_HINT = (
    "Hint: send Booster.save_raw('json') (not 'ubj') as one uint8 array, as "
    "pollinate.frameworks.xgboost.booster_to_arrays(booster) does."
)
# per-node arrays a tree must hold, one entry per node
_NODE_KEYS = ("left_children", "right_children", "split_indices", "split_conditions")


def empty_booster() -> Arrays:
    """The model a run starts from: no trees yet, so round 1's clients train from scratch.

    >>> empty_booster()["booster"].shape
    (0,)
    """
    return Arrays({BOOSTER: np.zeros(0, np.uint8)})


def parse_booster(data: bytes) -> JsonModel:
    """The booster JSON model in ``data``, checked enough to be merged; ValueError if not.

    Checks what the merge relies on and what would make every client fail to load the
    merged model: a gbtree booster, tree ids, child indices and features in range.
    """
    if data[:1] != b"{":
        what = "are empty" if not data else f"start with {bytes(data[:8])!r}"
        raise ValueError(f"the booster bytes {what}: not a JSON model.\n{_HINT}")
    try:
        doc = json.loads(data, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"the booster bytes are not a JSON model ({exc}).\n{_HINT}") from None
    _check_booster(doc)
    return doc


def encode_booster(doc: JsonModel) -> np.ndarray:
    """A booster JSON model as the uint8 array it travels in."""
    data = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
    return np.frombuffer(data, np.uint8)


def num_trees(doc: JsonModel) -> int:
    """How many trees a (checked) booster holds."""
    return len(_model(doc)["trees"])


def append_trees(base: JsonModel, additions: Sequence[JsonModel]) -> JsonModel:
    """``base`` with every tree of ``additions`` appended, in order; ``base`` is modified.

    Tree ids are renumbered and ``num_trees``, ``tree_info`` and ``iteration_indptr`` (where
    each boosting round's trees start) extended, so each addition's rounds stay rounds of the
    merged model. Early-stopping attributes (``best_iteration``) no longer hold and are dropped.
    """
    model = _model(base)
    for doc in additions:
        extra = _model(doc)
        offset = len(model["trees"])
        model["iteration_indptr"] += [offset + i for i in extra["iteration_indptr"][1:]]
        model["tree_info"] += extra["tree_info"]
        model["trees"] += extra["trees"]
    for i, tree in enumerate(model["trees"]):
        tree["id"] = i
    model["gbtree_model_param"]["num_trees"] = str(len(model["trees"]))
    attributes = base["learner"].get("attributes")
    for key in ("best_iteration", "best_score", "best_ntree_limit"):
        if isinstance(attributes, dict):
            attributes.pop(key, None)
    return base


def without_trees(doc: JsonModel, *, base_score: str) -> JsonModel:
    """A copy of ``doc``'s learner with no trees, starting from ``base_score``: the base that
    round 1's trees are appended to when there is no global model yet."""
    base = copy.deepcopy(doc)
    _model(base).update(trees=[], tree_info=[], iteration_indptr=[0])
    _params(base)["base_score"] = base_score
    return base


def mean_base_score(docs: Sequence[JsonModel], weights: Sequence[int]) -> str:
    """The weighted mean of the boosters' ``base_score``, written as the first one writes it.

    Clients that train from scratch each start from their own base score (for the usual
    objectives, their label mean); the mean weighted by examples is the base of the whole
    federation. xgboost 3 writes a vector ``"[4.4E-1]"``, xgboost 2 a number ``"4.4E-1"``.
    """
    texts = [_params(doc).get("base_score") for doc in docs]
    scores = np.array([_scores(text) for text in texts], np.float64)
    if scores.ndim != 2 or not np.isfinite(scores).all():
        shown = inert(repr(texts), 200)  # settings a node wrote: bounded in the reason
        raise ValueError(f"base_score values {shown} differ in length or are not finite")
    mean = np.average(scores, axis=0, weights=np.asarray(weights, np.float64))
    values = ",".join(repr(float(v)) for v in mean)
    return f"[{values}]" if str(texts[0]).startswith("[") else values


def check_compatible(doc: JsonModel, reference: JsonModel) -> None:
    """ValueError unless ``doc`` was trained for the same task as ``reference``."""
    mine, theirs = _task(doc), _task(reference)
    for key, value in mine.items():
        if value != theirs[key]:
            raise ValueError(
                f"the booster has {key}={value!r}, the global model {theirs[key]!r}: every "
                "client must train on the same features with the same objective and params"
            )


# --- checks and helpers --------------------------------------------------------------------


def _check_booster(doc: Any) -> None:
    learner = _field(doc, "learner", dict)
    booster = _field(learner, "gradient_booster", dict)
    if booster.get("name") != "gbtree":
        raise ValueError(
            f"the booster is {booster.get('name')!r}; only 'gbtree' boosters can be merged.\n"
            "Hint: train with booster='gbtree' (the default)."
        )
    _field(learner, "learner_model_param", dict)
    model = _field(booster, "model", dict)
    trees = _field(model, "trees", list)
    indptr = _field(model, "iteration_indptr", list)
    info = _field(model, "tree_info", list)
    _field(model, "gbtree_model_param", dict)
    n = len(trees)
    if len(info) != n or not indptr or indptr[0] != 0 or indptr[-1] != n:
        raise ValueError(f"the booster's tree_info / iteration_indptr do not match its {n} trees")
    if any(not _is_int(a) or not _is_int(b) or a > b for a, b in itertools.pairwise(indptr)):
        raise ValueError("the booster's iteration_indptr is not a rising list of ints")
    if not all(_is_int(t) and t >= 0 for t in info):
        raise ValueError("the booster's tree_info is not a list of ints >= 0")
    num_feature = int(_scores(_params(doc).get("num_feature", "0"))[0])
    _scores(_params(doc).get("base_score", "0"))
    for i, tree in enumerate(trees):
        _check_tree(tree, i, num_feature)


def _check_tree(tree: Any, i: int, num_feature: int) -> None:
    if not isinstance(tree, dict):
        raise ValueError(f"tree {i} of the booster is not an object")
    columns = [_field(tree, key, list) for key in _NODE_KEYS]
    nodes = len(columns[0])
    if nodes == 0 or any(len(column) != nodes for column in columns):
        raise ValueError(f"tree {i} of the booster has node lists of different lengths")
    left, right, features, _ = columns
    for child in (*left, *right):
        if not _is_int(child) or not -1 <= child < nodes:
            raise ValueError(f"tree {i} of the booster has child {child!r} outside its nodes")
    if any(not _is_int(f) or not 0 <= f < max(num_feature, 1) for f in features):
        raise ValueError(f"tree {i} of the booster splits on a feature not in 0..{num_feature - 1}")


def _field(obj: Any, key: str, kind: type) -> Any:
    value = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(value, kind):
        raise ValueError(f"the booster JSON has no {kind.__name__} {key!r}.\n{_HINT}")
    return value


def _model(doc: JsonModel) -> dict[str, Any]:
    return doc["learner"]["gradient_booster"]["model"]


def _params(doc: JsonModel) -> dict[str, Any]:
    return doc["learner"]["learner_model_param"]


def _task(doc: JsonModel) -> dict[str, object]:
    """What every booster of one run shares (base_score may differ in round 1)."""
    objective = doc["learner"].get("objective")
    return {
        **{key: _params(doc).get(key) for key in ("num_feature", "num_class", "num_target")},
        "num_parallel_tree": _model(doc)["gbtree_model_param"].get("num_parallel_tree", "1"),
        "objective": objective.get("name") if isinstance(objective, dict) else None,
        "base_score length": len(_scores(_params(doc).get("base_score", "0"))),
    }


def _scores(text: object) -> list[float]:
    """The numbers in a learner setting: ``"5"``, ``"4.4E-1"`` or ``"[4.4E-1,1E0]"``."""
    try:
        values = [float(part) for part in str(text).strip("[]").split(",")]
    except ValueError:
        values = [float("nan")]
    if not all(abs(v) < float("inf") for v in values):
        shown = inert(repr(text), 200)
        raise ValueError(f"the booster's setting {shown} is not a number or a list of numbers")
    return values


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number a booster holds")
