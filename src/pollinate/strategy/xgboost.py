"""Federated XGBoost at the hub: boosted trees merged as JSON, without xgboost.

A booster travels as its JSON model (``Booster.save_raw("json")``), one uint8 array; the run
starts from an empty array (no trees yet). The hub reads and edits that JSON with the json
module, so a hub needs no xgboost. ``FedXgbBagging`` appends every sampled client's new trees
to the global model; ``FedXgbCyclic`` lets one client per round, in turn, train it further.

Invariants: the merged model's margin is the global model's margin plus the margins of every
client's new trees; trees are appended in node-id order, so the merged model does not depend
on the order replies arrived in. A reply that is not a booster compatible with the global one
is left out with a warning in the run's log, never merged: one bad node cannot break the model
every other node loads.

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
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from pollinate.errors import RunError
from pollinate.records import Arrays
from pollinate.strategy.base import FitAggregator, FitResult, Strategy, TooFewReplies

log = logging.getLogger("pollinate.strategy")

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


# --- the JSON model ------------------------------------------------------------------------


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


def mean_base_score(docs: Sequence[JsonModel], weights: Sequence[int]) -> str:
    """The weighted mean of the boosters' ``base_score``, written as the first one writes it.

    Clients that train from scratch each start from their own base score (for the usual
    objectives, their label mean); the mean weighted by examples is the base of the whole
    federation. xgboost 3 writes a vector ``"[4.4E-1]"``, xgboost 2 a number ``"4.4E-1"``.
    """
    texts = [_params(doc).get("base_score") for doc in docs]
    scores = np.array([_scores(text) for text in texts], np.float64)
    if scores.ndim != 2 or not np.isfinite(scores).all():
        raise ValueError(f"base_score values {texts!r} differ in length or are not finite")
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


# --- strategies ----------------------------------------------------------------------------


class FedXgbBagging(Strategy):
    """Federated boosting by bagging trees: each round appends every client's new trees.

    Bagging (Breiman 1996, "Bagging predictors") aggregates models trained on different
    samples; here each sampled client ``k`` fits ``local_rounds`` trees ``f_k`` to its own
    data, starting from the global model ``F_t``, and the hub keeps them all:
    ``F_{t+1}(x) = F_t(x) + sum_k f_k(x)``. Every client corrects the same ``F_t``, so a round
    moves the margin by up to ``clients x local_rounds x eta``: pick ``eta`` (the clients'
    learning rate) small enough for the clients sampled per round.

    In round 1 the global model is empty: the first reply (by node id) gives the learner's
    settings, and ``base_score`` is the mean of the replies' weighted by examples (set
    ``base_score`` in the clients' params to make every client start from the same one).
    Clients: ``pollinate.frameworks.xgboost.XgbBaggingClient``.
    """

    updates_like_model = False

    def start_fit(self, round: int, current: Arrays) -> FitAggregator:
        return _AppendTrees(current)


class FedXgbCyclic(Strategy):
    """Federated boosting by cyclic training: one client per round, in turn, boosts the global
    model further and its whole booster becomes the next global model.

    Cyclic training is cyclical weight transfer (Chang et al. 2018, "Distributed deep
    learning networks among institutions for medical imaging") for boosted trees: with
    clients ``1..K`` in turn, ``F_{t+1} = F_t + f_{k(t)}`` where ``k(t)`` is the client after
    ``k(t-1)`` in node-id order (wrapping around), so a model sees every client's data each
    ``K`` rounds. ``fraction_fit`` and ``min_fit_clients`` do not apply.
    Clients: ``pollinate.frameworks.xgboost.XgbCyclicClient``.

    >>> cyclic = FedXgbCyclic()
    >>> [cyclic.sample_fit([7, 3, 5], rng=None)[0] for _ in range(4)]
    [3, 5, 7, 3]
    """

    updates_like_model = False

    def __init__(self, **kwargs: Any) -> None:
        for name in ("fraction_fit", "min_fit_clients"):
            if name in kwargs:
                raise ValueError(
                    f"FedXgbCyclic trains one client per round, so {name}={kwargs[name]!r} "
                    f"does not apply.\nHint: leave {name} out."
                )
        kwargs.setdefault("min_available_clients", 1)
        super().__init__(min_fit_clients=1, **kwargs)
        self._last_node: int | None = None

    def sample_fit(self, available: Sequence[int], rng: np.random.Generator) -> list[int]:
        """The one node after the last round's, in node-id order (wrapping around)."""
        nodes = sorted(available)
        if not nodes or len(nodes) < self.min_available_clients:
            raise RunError(
                f"FedXgbCyclic needs {max(self.min_available_clients, 1)} clients available "
                f"but only {len(nodes)} are.\nHint: lower min_available_clients, or run more "
                "clients (--clients N in simulation)."
            )
        last = self._last_node
        later = [n for n in nodes if last is not None and n > last]
        self._last_node = later[0] if later else nodes[0]
        return [self._last_node]

    def start_fit(self, round: int, current: Arrays) -> FitAggregator:
        return _TakeLatest(current)

    def state(self) -> Arrays:
        if self._last_node is None:
            return Arrays()
        return Arrays({"last_node": np.array([self._last_node], np.int64)})

    def load_state(self, state: Arrays) -> None:
        self._last_node = int(state["last_node"][0]) if "last_node" in state else None


class _Replies:
    """Parses each reply's booster as it arrives, keeping the usable ones."""

    def __init__(self, current: Arrays) -> None:
        self.name = _booster_name(current)
        data = current[self.name].tobytes()
        try:
            self.current = parse_booster(data) if data else None
        except ValueError as exc:
            raise ValueError(f"the global model is not a booster: {exc}") from None
        self.kept: list[tuple[FitResult, JsonModel]] = []

    def add(self, result: FitResult) -> None:
        try:
            doc = self._parse(result)
        except ValueError as exc:
            log.warning("node %d sent no usable booster, left out: %s", result.node_id, exc)
            return
        self.kept.append((result, doc))

    def _parse(self, result: FitResult) -> JsonModel:
        if result.arrays.names != [self.name] or result.arrays[self.name].dtype != np.uint8:
            raise ValueError(f"sent {result.arrays!r}, expected one uint8 array {self.name!r}")
        doc = parse_booster(result.arrays[self.name].tobytes())
        if self.current is not None:
            check_compatible(doc, self.current)
        return doc

    def in_node_order(self) -> list[tuple[FitResult, JsonModel]]:
        if not self.kept:
            raise TooFewReplies("no reply held a usable booster (see the warnings above)")
        return sorted(self.kept, key=lambda kept: kept[0].node_id)


class _AppendTrees(_Replies):
    """Bagging: the global model with every reply's trees appended, in node-id order."""

    def finish(self) -> Arrays:
        replies = self.in_node_order()
        if self.current is None:  # round 1: no global model yet
            replies = _compatible_with_first(replies)
            base = _first_base(replies)
        else:
            base = self.current
        docs = [doc for _, doc in replies]
        return Arrays({self.name: encode_booster(append_trees(base, docs))})


class _TakeLatest(_Replies):
    """Cyclic: the reply's booster is the next global model, if it kept the global trees."""

    def _parse(self, result: FitResult) -> JsonModel:
        doc = super()._parse(result)
        have = num_trees(self.current) if self.current is not None else 0
        if num_trees(doc) < have:
            raise ValueError(
                f"the booster has {num_trees(doc)} trees, fewer than the global model's {have}: "
                "it did not continue from the global model (cyclic clients send the whole "
                "booster)"
            )
        return doc

    def finish(self) -> Arrays:
        result, _ = self.in_node_order()[0]
        return Arrays({self.name: np.array(result.arrays[self.name])})


# --- checks and helpers --------------------------------------------------------------------


def _first_base(replies: list[tuple[FitResult, JsonModel]]) -> JsonModel:
    """Round 1's base: the first reply's learner without its trees, with the replies' mean
    base score weighted by examples."""
    base = copy.deepcopy(replies[0][1])
    _model(base).update(trees=[], tree_info=[], iteration_indptr=[0])
    weights = [result.num_examples for result, _ in replies]
    _params(base)["base_score"] = mean_base_score([doc for _, doc in replies], weights)
    return base


def _compatible_with_first(
    replies: list[tuple[FitResult, JsonModel]],
) -> list[tuple[FitResult, JsonModel]]:
    """The replies trained for the same task as the first one (round 1 has no global model
    to check them against), and a warning for each other one."""
    kept = replies[:1]
    for result, doc in replies[1:]:
        try:
            check_compatible(doc, replies[0][1])
        except ValueError as exc:
            log.warning("node %d sent no usable booster, left out: %s", result.node_id, exc)
            continue
        kept.append((result, doc))
    return kept


def _booster_name(arrays: Arrays) -> str:
    if len(arrays) != 1 or arrays.to_list()[0].dtype != np.uint8:
        raise ValueError(
            f"the global model is {arrays!r}, not one uint8 array holding a booster.\n"
            "Hint: start XGBoost runs from ServerApp(initial_arrays=empty_booster())."
        )
    return arrays.names[0]


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
        raise ValueError(f"the booster's setting {text!r} is not a number or a list of numbers")
    return values


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number a booster holds")
