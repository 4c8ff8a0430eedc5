"""The XGBoost strategies alone, without xgboost: the hub edits booster JSON as plain data.

Boosters here are hand-built stumps in xgboost's JSON model format; a small predictor in this
file reads them the way xgboost does (margin = sum of the leaves each tree sends x to), so the
merge is checked on what a model predicts. tests/frameworks/test_xgboost.py checks the same
merges with real xgboost.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
import pytest

from pollinate.errors import RunError
from pollinate.records import Arrays
from pollinate.strategy import STRATEGIES, FedXgbBagging, FedXgbCyclic, FitResult, strategy_class
from pollinate.strategy.base import TooFewReplies
from pollinate.strategy.xgboost import (
    append_trees,
    empty_booster,
    mean_base_score,
    parse_booster,
)

NUM_FEATURE = 3


def stump(feature: int, threshold: float, left: float, right: float) -> dict[str, Any]:
    """One split: x[feature] < threshold goes to the left leaf."""
    return {
        "base_weights": [0.0, left, right],
        "categories": [],
        "categories_nodes": [],
        "categories_segments": [],
        "categories_sizes": [],
        "default_left": [0, 0, 0],
        "id": 0,
        "left_children": [1, -1, -1],
        "loss_changes": [1.0, 0.0, 0.0],
        "parents": [2147483647, 0, 0],
        "right_children": [2, -1, -1],
        "split_conditions": [threshold, left, right],
        "split_indices": [feature, 0, 0],
        "split_type": [0, 0, 0],
        "sum_hessian": [2.0, 1.0, 1.0],
        "tree_param": {
            "num_deleted": "0",
            "num_feature": str(NUM_FEATURE),
            "num_nodes": "3",
            "size_leaf_vector": "1",
        },
    }


def booster(
    trees: list[dict[str, Any]],
    *,
    base_score: str = "[5E-1]",
    per_round: int = 1,
    objective: str = "binary:logistic",
    num_feature: int = NUM_FEATURE,
) -> dict[str, Any]:
    """A booster JSON model holding ``trees``, ``per_round`` of them per boosting round."""
    trees = [{**tree, "id": i} for i, tree in enumerate(trees)]
    return {
        "learner": {
            "attributes": {"best_iteration": "1"},
            "feature_names": [],
            "feature_types": [],
            "gradient_booster": {
                "model": {
                    "cats": {"enc": [], "feature_segments": [], "sorted_idx": []},
                    "gbtree_model_param": {"num_parallel_tree": "1", "num_trees": str(len(trees))},
                    "iteration_indptr": list(range(0, len(trees) + 1, per_round)),
                    "tree_info": [i % per_round for i in range(len(trees))],
                    "trees": trees,
                },
                "name": "gbtree",
            },
            "learner_model_param": {
                "base_score": base_score,
                "boost_from_average": "1",
                "num_class": "0" if per_round == 1 else str(per_round),
                "num_feature": str(num_feature),
                "num_target": "1",
            },
            "objective": {"name": objective, "reg_loss_param": {"scale_pos_weight": "1"}},
        },
        "version": [3, 2, 0],
    }


def as_arrays(doc: dict[str, Any] | bytes) -> Arrays:
    data = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return Arrays({"booster": np.frombuffer(data, np.uint8)})


def model_of(arrays: Arrays) -> dict[str, Any]:
    return json.loads(arrays["booster"].tobytes())  # type: ignore[no-any-return]


def margin(doc: dict[str, Any], x: np.ndarray) -> np.ndarray:
    """What xgboost adds to the base margin: each tree's leaf for each row of x."""
    out = np.zeros(len(x))
    for tree in doc["learner"]["gradient_booster"]["model"]["trees"]:
        for row, features in enumerate(x):
            node = 0
            while tree["left_children"][node] != -1:
                go_left = features[tree["split_indices"][node]] < tree["split_conditions"][node]
                node = tree["left_children" if go_left else "right_children"][node]
            out[row] += tree["split_conditions"][node]
    return out


def fit(node: int, doc: dict[str, Any] | bytes, examples: int = 10) -> FitResult:
    return FitResult(node, as_arrays(doc), examples, {})


X = np.random.default_rng(0).normal(size=(50, NUM_FEATURE))
GLOBAL = booster([stump(0, 0.0, -0.2, 0.3), stump(1, 0.5, 0.1, -0.1)])
CLIENT_A = booster([stump(2, -0.3, 0.05, -0.05)])
CLIENT_B = booster([stump(0, 1.0, -0.02, 0.2), stump(1, 0.0, 0.04, 0.0)])


def bagged(current: dict[str, Any] | None, results: list[FitResult]) -> Arrays:
    aggregator = FedXgbBagging().start_fit(
        2, empty_booster() if current is None else as_arrays(current)
    )
    for result in results:
        aggregator.add(result)
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


def test_rounds_of_several_trees_stay_rounds_of_the_merged_model() -> None:
    # three classes: each boosting round grows one tree per class
    three = [stump(0, 0.0, 0.1 * i, -0.1 * i) for i in range(1, 7)]
    base = booster(three, per_round=3, objective="multi:softprob")
    extra = booster(three[:3], per_round=3, objective="multi:softprob")
    model = append_trees(base, [extra])["learner"]["gradient_booster"]["model"]
    assert model["iteration_indptr"] == [0, 3, 6, 9]
    assert model["tree_info"] == [0, 1, 2] * 3


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


def test_the_base_score_keeps_the_format_of_its_xgboost_version() -> None:
    old = [booster([], base_score="4E-1"), booster([], base_score="6E-1")]
    assert float(mean_base_score(old, [1, 1])) == pytest.approx(0.5)
    vectors = [booster([], base_score="[1E0,2E0]"), booster([], base_score="[3E0,4E0]")]
    assert mean_base_score(vectors, [1, 3]) == "[2.5,3.5]"


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
def test_a_reply_that_is_no_usable_booster_is_left_out_with_a_warning(
    name: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, "pollinate.strategy"):
        merged = bagged(GLOBAL, [fit(1, CLIENT_A), fit(2, BAD_REPLIES[name])])
    assert merged == bagged(GLOBAL, [fit(1, CLIENT_A)])
    assert "node 2 sent no usable booster, left out" in caplog.text


def test_a_reply_with_other_arrays_is_left_out(caplog: pytest.LogCaptureFixture) -> None:
    wrong = FitResult(2, Arrays({"w": np.zeros(3, np.float32)}), 10, {})
    with caplog.at_level(logging.WARNING, "pollinate.strategy"):
        merged = bagged(GLOBAL, [fit(1, CLIENT_A), wrong])
    assert merged == bagged(GLOBAL, [fit(1, CLIENT_A)])
    assert "expected one uint8 array 'booster'" in caplog.text


def test_round_one_leaves_out_replies_unlike_the_first() -> None:
    other = booster([stump(0, 0.0, 0.1, 0.2)], num_feature=4)
    merged = model_of(bagged(None, [fit(1, CLIENT_A), fit(2, other)]))
    assert len(merged["learner"]["gradient_booster"]["model"]["trees"]) == 1


def test_a_round_without_a_usable_booster_keeps_the_global_model() -> None:
    with pytest.raises(TooFewReplies, match="no reply held a usable booster"):
        bagged(GLOBAL, [fit(1, b"junk")])


def test_a_global_model_that_is_no_booster_is_a_usage_error() -> None:
    with pytest.raises(ValueError, match="Hint: start XGBoost runs from"):
        FedXgbBagging().start_fit(1, Arrays({"w": np.zeros(3)}))
    with pytest.raises(ValueError, match="the global model is not a booster"):
        FedXgbBagging().start_fit(1, as_arrays(b"junk"))


def test_parse_booster_explains_what_to_send() -> None:
    with pytest.raises(ValueError, match=r"Hint: send Booster.save_raw\('json'\)"):
        parse_booster(b"{L\x00")
    assert parse_booster(json.dumps(GLOBAL).encode()) == GLOBAL


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


def test_cyclic_leaves_out_a_booster_that_lost_the_global_trees(
    caplog: pytest.LogCaptureFixture,
) -> None:
    aggregator = FedXgbCyclic().start_fit(4, as_arrays(GLOBAL))
    with caplog.at_level(logging.WARNING, "pollinate.strategy"):
        aggregator.add(fit(3, CLIENT_A))
    assert "has 1 trees, fewer than the global model's 2" in caplog.text
    with pytest.raises(TooFewReplies):
        aggregator.finish()


def test_cyclic_refuses_settings_that_do_not_apply_and_too_few_nodes() -> None:
    with pytest.raises(ValueError, match="fraction_fit=0.5 does not apply"):
        FedXgbCyclic(fraction_fit=0.5)
    with pytest.raises(RunError, match="needs 3 clients available but only 2"):
        FedXgbCyclic(min_available_clients=3).sample_fit([1, 2], np.random.default_rng(0))


# --- both ----------------------------------------------------------------------------------


def test_both_are_named_strategies_whose_updates_grow_the_model() -> None:
    assert strategy_class("FedXgbBagging") is FedXgbBagging is STRATEGIES["fedxgbbagging"]
    assert strategy_class("fedxgbcyclic") is FedXgbCyclic
    assert not FedXgbBagging.updates_like_model and not FedXgbCyclic.updates_like_model
