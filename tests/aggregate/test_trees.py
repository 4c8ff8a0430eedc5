"""Specification of the booster JSON math, without xgboost: reading and checking a booster,
appending trees, and the base score of round 1, on hand-built boosters.

Boosters here are stumps in xgboost's JSON model format; a small predictor reads them the way
xgboost does (margin = sum of the leaves each tree sends x to), so merges are checked on what
a model predicts. tests/strategy/test_xgboost.py builds on these boosters.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import numpy as np
import pytest

from pollinate.aggregate.trees import (
    append_trees,
    mean_base_score,
    num_trees,
    parse_booster,
    without_trees,
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


X = np.random.default_rng(0).normal(size=(50, NUM_FEATURE))
GLOBAL = booster([stump(0, 0.0, -0.2, 0.3), stump(1, 0.5, 0.1, -0.1)])
CLIENT_A = booster([stump(2, -0.3, 0.05, -0.05)])
CLIENT_B = booster([stump(0, 1.0, -0.02, 0.2), stump(1, 0.0, 0.04, 0.0)])


def test_appended_trees_add_their_margins() -> None:
    base, a, b = copy.deepcopy([GLOBAL, CLIENT_A, CLIENT_B])
    merged = append_trees(base, [a, b])
    expected = margin(GLOBAL, X) + margin(CLIENT_A, X) + margin(CLIENT_B, X)
    np.testing.assert_allclose(margin(merged, X), expected, rtol=0, atol=1e-12)
    trees = merged["learner"]["gradient_booster"]["model"]["trees"]
    assert [tree["id"] for tree in trees] == [0, 1, 2, 3, 4] and num_trees(merged) == 5


def test_rounds_of_several_trees_stay_rounds_of_the_merged_model() -> None:
    # three classes: each boosting round grows one tree per class
    three = [stump(0, 0.0, 0.1 * i, -0.1 * i) for i in range(1, 7)]
    base = booster(three, per_round=3, objective="multi:softprob")
    extra = booster(three[:3], per_round=3, objective="multi:softprob")
    model = append_trees(base, [extra])["learner"]["gradient_booster"]["model"]
    assert model["iteration_indptr"] == [0, 3, 6, 9]
    assert model["tree_info"] == [0, 1, 2] * 3


def test_the_base_score_keeps_the_format_of_its_xgboost_version() -> None:
    old = [booster([], base_score="4E-1"), booster([], base_score="6E-1")]
    assert float(mean_base_score(old, [1, 1])) == pytest.approx(0.5)
    vectors = [booster([], base_score="[1E0,2E0]"), booster([], base_score="[3E0,4E0]")]
    assert mean_base_score(vectors, [1, 3]) == "[2.5,3.5]"


def test_without_trees_keeps_the_learner_and_sets_the_base_score() -> None:
    base = without_trees(GLOBAL, base_score="[2.5E-1]")
    assert num_trees(base) == 0 and num_trees(GLOBAL) == 2  # a copy: GLOBAL keeps its trees
    assert base["learner"]["gradient_booster"]["model"]["iteration_indptr"] == [0]
    assert base["learner"]["learner_model_param"]["base_score"] == "[2.5E-1]"
    assert base["learner"]["objective"] == GLOBAL["learner"]["objective"]


def test_parse_booster_explains_what_to_send() -> None:
    with pytest.raises(ValueError, match=r"Hint: send Booster.save_raw\('json'\)"):
        parse_booster(b"{L\x00")
    assert parse_booster(json.dumps(GLOBAL).encode()) == GLOBAL
