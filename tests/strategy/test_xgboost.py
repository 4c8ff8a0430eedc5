"""The XGBoost strategies alone, without xgboost: the hub edits booster JSON as plain data.

Boosters here are the hand-built stumps of tests/aggregate/test_trees.py (which specifies the
JSON math itself), and merges are checked on what a model predicts, with its small predictor.
tests/frameworks/test_xgboost.py checks the same merges with real xgboost.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from pollinate.aggregate.trees import empty_booster
from pollinate.errors import RunError
from pollinate.records import Arrays
from pollinate.strategy import (
    STRATEGIES,
    FedXgbBagging,
    FedXgbCyclic,
    FitResult,
    Sampling,
    strategy_class,
)
from pollinate.strategy.base import TooFewReplies, UnusableUpdate
from tests.aggregate.test_trees import CLIENT_A, CLIENT_B, GLOBAL, X, booster, margin, stump


def as_arrays(doc: dict[str, Any] | bytes) -> Arrays:
    data = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return Arrays({"booster": np.frombuffer(data, np.uint8)})


def model_of(arrays: Arrays) -> dict[str, Any]:
    return json.loads(arrays["booster"].tobytes())  # type: ignore[no-any-return]


def fit(node: int, doc: dict[str, Any] | bytes, examples: int = 10) -> FitResult:
    return FitResult(node, as_arrays(doc), examples, {})


def bagged(
    current: dict[str, Any] | None, results: list[FitResult], refused: list[str] | None = None
) -> Arrays:
    """The round's merge; like the run loop, it notes the updates the aggregator refuses."""
    aggregator = FedXgbBagging().start_fit(
        2, empty_booster() if current is None else as_arrays(current)
    )
    for result in results:
        try:
            aggregator.add(result)
        except UnusableUpdate as exc:
            if refused is None:
                raise
            refused.append(f"node {result.node_id}: {exc}")
    return aggregator.finish()


# --- bagging -------------------------------------------------------------------------------


def test_bagging_adds_every_clients_trees_to_the_global_margin() -> None:
    merged = model_of(bagged(GLOBAL, [fit(3, CLIENT_A), fit(8, CLIENT_B)]))
    expected = margin(GLOBAL, X) + margin(CLIENT_A, X) + margin(CLIENT_B, X)
    np.testing.assert_allclose(margin(merged, X), expected, rtol=0, atol=1e-12)


def test_merged_trees_are_renumbered_and_the_bookkeeping_follows() -> None:
    merged = model_of(bagged(GLOBAL, [fit(3, CLIENT_A), fit(8, CLIENT_B)]))
    model = merged["learner"]["gradient_booster"]["model"]
    assert [tree["id"] for tree in model["trees"]] == [0, 1, 2, 3, 4]
    assert model["gbtree_model_param"]["num_trees"] == "5"
    assert model["iteration_indptr"] == [0, 1, 2, 3, 4, 5]
    assert model["tree_info"] == [0, 0, 0, 0, 0]
    # the global model's settings stay; early stopping no longer describes the merged model
    assert merged["learner"]["learner_model_param"] == GLOBAL["learner"]["learner_model_param"]
    assert "best_iteration" not in merged["learner"]["attributes"]


def test_the_merge_does_not_depend_on_the_order_replies_arrive_in() -> None:
    replies = [fit(5, CLIENT_B), fit(2, CLIENT_A), fit(9, CLIENT_A)]
    first = bagged(GLOBAL, replies)
    assert bagged(GLOBAL, replies[::-1]) == first
    trees = model_of(first)["learner"]["gradient_booster"]["model"]["trees"]
    # node 2's tree, then node 5's two, then node 9's
    assert [t["split_indices"][0] for t in trees[2:]] == [2, 0, 1, 2]


def test_round_one_starts_from_the_first_learner_with_the_mean_base_score() -> None:
    a = booster([stump(0, 0.0, -0.1, 0.1)], base_score="[2E-1]")
    b = booster([stump(1, 0.0, -0.3, 0.3)], base_score="[6E-1]")
    merged = model_of(bagged(None, [fit(4, b, examples=30), fit(1, a, examples=10)]))
    assert merged["learner"]["learner_model_param"]["base_score"] == "[0.5]"  # (2 + 18) / 40
    np.testing.assert_allclose(margin(merged, X), margin(a, X) + margin(b, X), atol=1e-12)
    assert merged["learner"]["gradient_booster"]["model"]["iteration_indptr"] == [0, 1, 2]


def edited(doc: dict[str, Any], path: str, value: Any) -> bytes:
    """``doc`` as JSON bytes, with the value at ``path`` ("a/b/0/c") replaced."""
    doc = json.loads(json.dumps(doc))
    *parents, last = path.split("/")
    node: Any = doc
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    node[int(last) if isinstance(node, list) else last] = value
    return json.dumps(doc).encode()


MODEL = "learner/gradient_booster/model"
BAD_REPLIES = {
    "empty bytes": b"",
    "not json": b"\x00\x01\x02",
    "truncated json": json.dumps(CLIENT_A).encode()[:-10],
    "ubjson": b"{L\x00\x00\x00\x00\x00\x00\x00\x07learner{",
    "deep nesting": b'{"a":' * 100_000,
    "json but no booster": b'{"learner": 1}',
    "NaN leaf": json.dumps(CLIENT_A).replace("0.05", "NaN").encode(),
    "dart booster": edited(CLIENT_A, "learner/gradient_booster/name", "dart"),
    "child out of range": edited(CLIENT_A, f"{MODEL}/trees/0/left_children/0", 7),
    "split on a float": edited(CLIENT_A, f"{MODEL}/trees/0/split_indices/0", 1.5),
    "feature out of range": json.dumps(booster([stump(3, 0.0, 0.1, 0.2)])).encode(),
    "tree_info too short": edited(CLIENT_B, f"{MODEL}/tree_info", [0]),
    "indptr falls": edited(CLIENT_B, f"{MODEL}/iteration_indptr", [0, 2, 1, 2]),
    "base_score not a number": edited(CLIENT_A, "learner/learner_model_param/base_score", "x"),
    "other features": json.dumps(booster([stump(0, 0.0, 0.1, 0.2)], num_feature=4)).encode(),
    "other objective": json.dumps(booster([], objective="reg:squarederror")).encode(),
}


@pytest.mark.parametrize("name", list(BAD_REPLIES))
def test_a_reply_that_is_no_usable_booster_is_refused_with_the_reason(name: str) -> None:
    refused: list[str] = []
    merged = bagged(GLOBAL, [fit(1, CLIENT_A), fit(2, BAD_REPLIES[name])], refused)
    assert merged == bagged(GLOBAL, [fit(1, CLIENT_A)])
    assert len(refused) == 1 and refused[0].startswith("node 2: no usable booster: ")


def test_a_reply_with_other_arrays_is_refused() -> None:
    wrong = FitResult(2, Arrays({"w": np.zeros(3, np.float32)}), 10, {})
    refused: list[str] = []
    merged = bagged(GLOBAL, [fit(1, CLIENT_A), wrong], refused)
    assert merged == bagged(GLOBAL, [fit(1, CLIENT_A)])
    assert "expected one uint8 array 'booster'" in refused[0]


def test_round_one_leaves_out_replies_unlike_the_first() -> None:
    other = booster([stump(0, 0.0, 0.1, 0.2)], num_feature=4)
    merged = model_of(bagged(None, [fit(1, CLIENT_A), fit(2, other)]))
    assert len(merged["learner"]["gradient_booster"]["model"]["trees"]) == 1


def test_a_round_without_a_usable_booster_keeps_the_global_model() -> None:
    with pytest.raises(TooFewReplies, match="no reply held a usable booster"):
        bagged(GLOBAL, [fit(1, b"junk")], refused=[])


def test_a_global_model_that_is_no_booster_is_a_usage_error() -> None:
    with pytest.raises(ValueError, match="Hint: start XGBoost runs from"):
        FedXgbBagging().start_fit(1, Arrays({"w": np.zeros(3)}))
    with pytest.raises(ValueError, match="the global model is not a booster"):
        FedXgbBagging().start_fit(1, as_arrays(b"junk"))


# --- cyclic --------------------------------------------------------------------------------


def test_cyclic_trains_one_client_per_round_in_turn() -> None:
    strategy = FedXgbCyclic()
    picks = [strategy.sample_fit([9, 2, 5], np.random.default_rng(r))[0] for r in range(7)]
    assert picks == [2, 5, 9, 2, 5, 9, 2]


def test_cyclic_goes_on_with_the_next_node_when_nodes_come_and_go() -> None:
    strategy = FedXgbCyclic()
    rng = np.random.default_rng(0)
    assert strategy.sample_fit([2, 5, 9], rng) == [2]
    assert strategy.sample_fit([2, 9], rng) == [9]  # 5 left
    assert strategy.sample_fit([2, 4, 9], rng) == [2]  # wraps around
    assert strategy.sample_fit([2, 4, 9], rng) == [4]  # 4 joined


def test_cyclic_resumes_with_the_node_after_the_checkpointed_one() -> None:
    strategy = FedXgbCyclic()
    assert strategy.state() == Arrays()
    strategy.sample_fit([1, 2, 3], np.random.default_rng(0))
    strategy.sample_fit([1, 2, 3], np.random.default_rng(0))
    resumed = FedXgbCyclic()
    resumed.load_state(strategy.state())
    assert resumed.sample_fit([1, 2, 3], np.random.default_rng(0)) == [3]


def test_cyclic_takes_the_clients_whole_booster() -> None:
    grown = booster([*GLOBAL["learner"]["gradient_booster"]["model"]["trees"], stump(2, 0, 1, 2)])
    aggregator = FedXgbCyclic().start_fit(4, as_arrays(GLOBAL))
    aggregator.add(fit(3, grown))
    assert model_of(aggregator.finish()) == grown


def test_cyclic_refuses_a_booster_that_lost_the_global_trees() -> None:
    aggregator = FedXgbCyclic().start_fit(4, as_arrays(GLOBAL))
    with pytest.raises(UnusableUpdate, match="has 1 trees, fewer than the global model's 2"):
        aggregator.add(fit(3, CLIENT_A))
    with pytest.raises(TooFewReplies):
        aggregator.finish()


def test_cyclic_refuses_settings_that_do_not_apply_and_too_few_nodes() -> None:
    with pytest.raises(ValueError, match="fraction_fit=0.5 does not apply"):
        FedXgbCyclic(sampling=Sampling(fraction_fit=0.5))
    with pytest.raises(RunError, match="needs 3 clients available but only 2"):
        FedXgbCyclic(sampling=Sampling(min_available_clients=3)).sample_fit(
            [1, 2], np.random.default_rng(0)
        )


# --- both ----------------------------------------------------------------------------------


def test_both_are_named_strategies_whose_updates_grow_the_model() -> None:
    assert strategy_class("FedXgbBagging") is FedXgbBagging is STRATEGIES["fedxgbbagging"]
    assert strategy_class("fedxgbcyclic") is FedXgbCyclic
    assert not FedXgbBagging.updates_like_model and not FedXgbCyclic.updates_like_model
