"""Federated XGBoost at the hub: boosted trees merged as JSON, without xgboost.

A booster travels as its JSON model, one uint8 array; the run starts from
``pollinate.aggregate.trees.empty_booster()`` (no trees yet). The hub reads and merges that
JSON with ``pollinate.aggregate.trees``, so a hub needs no xgboost. ``FedXgbBagging`` appends
every sampled client's new trees to the global model; ``FedXgbCyclic`` lets one client per
round, in turn, train it further.

Invariants: the merged model's margin is the global model's margin plus the margins of every
client's new trees; trees are appended in node-id order, so the merged model does not depend
on the order replies arrived in. A reply that is not a booster compatible with the global one
is left out with a warning in the run's log, never merged: one bad node cannot break the model
every other node loads.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Unpack

import numpy as np

from pollinate.aggregate.trees import (
    JsonModel,
    append_trees,
    check_compatible,
    encode_booster,
    mean_base_score,
    num_trees,
    parse_booster,
    without_trees,
)
from pollinate.records import Arrays
from pollinate.strategy.base import (
    FitAggregator,
    FitResult,
    Strategy,
    StrategyOptions,
    TooFewClients,
    TooFewReplies,
    UnusableUpdate,
)

log = logging.getLogger("pollinate.strategy")


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
    aggregates_mean = False  # it grows or replaces trees, no mean of arrays

    def start_fit(self, round: int, current: Arrays) -> FitAggregator:
        return _AppendTrees(current)


class FedXgbCyclic(Strategy):
    """Federated boosting by cyclic training: one client per round, in turn, boosts the global
    model further and its whole booster becomes the next global model.

    Cyclic training is cyclical weight transfer (Chang et al. 2018, "Distributed deep
    learning networks among institutions for medical imaging") for boosted trees: with
    clients ``1..K`` in turn, ``F_{t+1} = F_t + f_{k(t)}`` where ``k(t)`` is the client after
    ``k(t-1)`` in node-id order (wrapping around), so a model sees every client's data each
    ``K`` rounds. ``Sampling.fraction_fit`` and ``min_fit_clients`` do not apply.
    Clients: ``pollinate.frameworks.xgboost.XgbCyclicClient``.

    >>> cyclic = FedXgbCyclic()
    >>> [cyclic.sample_fit([7, 3, 5], rng=None)[0] for _ in range(4)]
    [3, 5, 7, 3]
    """

    updates_like_model = False
    aggregates_mean = False  # it grows or replaces trees, no mean of arrays

    def __init__(self, **options: Unpack[StrategyOptions]) -> None:
        super().__init__(**options)
        sampling = self.sampling
        for name, value, only in [
            ("fraction_fit", sampling.fraction_fit, 1.0),
            ("min_fit_clients", sampling.min_fit_clients, 1),
        ]:
            if value != only:
                raise ValueError(
                    f"FedXgbCyclic trains one client per round, so {name}={value!r} does not "
                    f"apply.\nHint: leave {name} out of Sampling(...)."
                )
        self._last_node: int | None = None

    @property
    def default_min_fit_clients(self) -> int:
        return 1

    def sample_fit(self, available: Sequence[int], rng: np.random.Generator) -> list[int]:
        """The one node after the last round's, in node-id order (wrapping around)."""
        nodes = sorted(available)
        needed = max(self.min_available_clients, 1)
        if len(nodes) < needed:
            raise TooFewClients(
                f"FedXgbCyclic needs {needed} clients available but only {len(nodes)} are."
                "\nHint: lower min_available_clients, or run more clients (--clients N in "
                "simulation).",
                needed,
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
        except ValueError as exc:  # the loop counts it as rejected, with the reason
            raise UnusableUpdate(f"no usable booster: {exc}") from None
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
            raise TooFewReplies("no reply held a usable booster (see the rejections above)")
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


# --- helpers -------------------------------------------------------------------------------


def _first_base(replies: list[tuple[FitResult, JsonModel]]) -> JsonModel:
    """Round 1's base: the first reply's learner without its trees, with the replies' mean
    base score weighted by examples."""
    docs = [doc for _, doc in replies]
    weights = [result.num_examples for result, _ in replies]
    return without_trees(docs[0], base_score=mean_base_score(docs, weights))


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
