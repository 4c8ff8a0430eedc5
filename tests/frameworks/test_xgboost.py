"""The XGBoost adapter with real xgboost: boosters as Arrays, and the hub's JSON merges
loaded back into xgboost, predicting what the trees they hold add up to."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import xgboost as xgb
from sklearn.metrics import log_loss, roc_auc_score

from pollinate import ServerApp, load_arrays, run_simulation, save_arrays, wire
from pollinate.aggregate.trees import empty_booster
from pollinate.client import Context
from pollinate.frameworks.xgboost import (
    BOOSTER,
    XgbBaggingClient,
    XgbClient,
    XgbCyclicClient,
    binary_metrics,
    booster_from_arrays,
    booster_to_arrays,
    empty_arrays,
    multiclass_metrics,
    save_native,
)
from pollinate.records import Arrays, Message
from pollinate.strategy import FedXgbBagging, FedXgbCyclic, FitResult

PARAMS = {"objective": "binary:logistic", "eta": 0.3, "max_depth": 3, "nthread": 1}


def data(seed: int, n: int = 300) -> xgb.DMatrix:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 5))
    y = (x[:, 0] + 0.5 * x[:, 1] * x[:, 2] + 0.3 * rng.normal(size=n) > 0).astype(np.float32)
    return xgb.DMatrix(x, label=y)


TEST = data(99)


def margin(booster: xgb.Booster, dm: xgb.DMatrix = TEST) -> np.ndarray:
    return booster.predict(dm, output_margin=True).astype(np.float64)


def bagging_round(
    current: Arrays, replies: list[Arrays], examples: list[int] | None = None
) -> Arrays:
    """One FedXgbBagging round at the hub: node i sent replies[i] with examples[i]."""
    aggregator = FedXgbBagging().start_fit(1, current)
    for node, arrays in enumerate(replies):
        aggregator.add(FitResult(node, arrays, (examples or [100] * len(replies))[node], {}))
    return aggregator.finish()


def loaded(arrays: Arrays) -> xgb.Booster:
    booster = booster_from_arrays(arrays)
    assert booster is not None
    return booster


# --- boosters as Arrays ----------------------------------------------------------------------


def test_a_booster_round_trips_through_arrays() -> None:
    booster = xgb.train(PARAMS, data(0), 4)
    arrays = booster_to_arrays(booster)
    assert arrays.names == [BOOSTER] and arrays[BOOSTER].dtype == np.uint8
    np.testing.assert_array_equal(margin(loaded(arrays)), margin(booster))


def test_the_empty_model_has_no_booster_and_predicts_one_half() -> None:
    assert booster_from_arrays(empty_arrays()) is None
    assert empty_arrays() == empty_booster()  # the adapter and the hub agree on the start
    loss, metrics = binary_metrics(None, TEST)
    assert loss == pytest.approx(np.log(2)) and metrics["auc"] == 0.5


def test_a_booster_survives_the_wire() -> None:
    booster = xgb.train(PARAMS, data(0), 3)
    for arrays in (booster_to_arrays(booster), empty_arrays()):
        reply = Message("fit", task_id="t", is_reply=True, arrays=arrays, num_examples=3)
        decoded = wire.decode(wire.encode(reply)).arrays  # read-only views of the message
        assert decoded == arrays and decoded[BOOSTER].dtype == np.uint8
        if arrays[BOOSTER].size:
            np.testing.assert_array_equal(margin(loaded(decoded)), margin(booster))
        else:
            assert booster_from_arrays(decoded) is None


@pytest.mark.parametrize(
    "arrays",
    [
        Arrays({BOOSTER: np.frombuffer(b"not a model at all", np.uint8)}),
        Arrays({BOOSTER: np.frombuffer(b'{"learner": {}}', np.uint8)}),
    ],
)
def test_bytes_that_are_not_a_booster_raise_with_a_hint(arrays: Arrays) -> None:
    with pytest.raises(ValueError, match="are not an XGBoost model") as info:
        booster_from_arrays(arrays)
    assert "Hint: send boosters with booster_to_arrays" in str(info.value)


@pytest.mark.parametrize(
    "arrays",
    [Arrays({"w": np.zeros(3, np.float32)}), Arrays({BOOSTER: np.zeros(3, np.float32)}), Arrays()],
)
def test_arrays_that_hold_no_booster_say_what_arrived(arrays: Arrays) -> None:
    with pytest.raises(ValueError, match="expected one uint8 array 'booster'"):
        booster_from_arrays(arrays)


# --- the hub's merges, loaded by xgboost -----------------------------------------------------


def test_bagging_the_slices_of_a_booster_gives_that_booster_back() -> None:
    whole = xgb.train(PARAMS, data(0), 6)
    merged = bagging_round(
        booster_to_arrays(whole[:2]), [booster_to_arrays(whole[2:4]), booster_to_arrays(whole[4:])]
    )
    booster = loaded(merged)
    assert booster.num_boosted_rounds() == 6
    np.testing.assert_array_equal(margin(booster), margin(whole))


def test_bagging_predicts_the_global_margin_plus_every_clients_new_trees() -> None:
    start = booster_to_arrays(xgb.train(PARAMS, data(0), 2))
    clients = [XgbBaggingClient(data(seed), TEST, PARAMS, local_rounds=2) for seed in (1, 2, 3)]
    replies = [client.fit(start, {})[0] for client in clients]
    assert [loaded(r).num_boosted_rounds() for r in replies] == [2, 2, 2]  # new trees only
    merged = loaded(bagging_round(start, replies))
    assert merged.num_boosted_rounds() == 2 + 3 * 2
    added = sum(trees_margin(loaded(reply)) for reply in replies)
    np.testing.assert_allclose(margin(merged), margin(loaded(start)) + added, atol=1e-5)


def test_round_one_merges_boosters_trained_from_scratch_around_their_mean_base() -> None:
    replies = [
        booster_to_arrays(xgb.train(PARAMS, data(seed, n), 2)) for seed, n in ((1, 100), (2, 300))
    ]
    bases = [base_score(loaded(r)) for r in replies]
    merged = loaded(bagging_round(empty_arrays(), replies, examples=[100, 300]))
    mean = (100 * bases[0] + 300 * bases[1]) / 400
    assert base_score(merged) == pytest.approx(mean, rel=1e-6)
    added = sum(trees_margin(loaded(reply)) for reply in replies)
    np.testing.assert_allclose(margin(merged), np.log(mean / (1 - mean)) + added, atol=1e-5)


def test_rounds_of_several_trees_merge_whole_for_multiclass_forests() -> None:
    x = np.random.default_rng(0).normal(size=(300, 4))
    dm = xgb.DMatrix(x, label=np.digitize(x[:, 0], [-0.5, 0.5]))
    params = {"objective": "multi:softprob", "num_class": 3, "num_parallel_tree": 2, "nthread": 1}
    whole = xgb.train(params, dm, 4)
    merged = bagging_round(
        booster_to_arrays(whole[:1]), [booster_to_arrays(whole[1:3]), booster_to_arrays(whole[3:])]
    )
    np.testing.assert_array_equal(loaded(merged).predict(dm), whole.predict(dm))


def test_cyclic_sends_the_whole_booster_and_it_becomes_the_global_model() -> None:
    start = booster_to_arrays(xgb.train(PARAMS, data(0), 2))
    reply, n, metrics = XgbCyclicClient(data(1), TEST, PARAMS, local_rounds=3).fit(start, {})
    assert loaded(reply).num_boosted_rounds() == 5 and n == 300 and "train_logloss" in metrics
    aggregator = FedXgbCyclic().start_fit(1, start)
    aggregator.add(FitResult(4, reply, n, metrics))
    np.testing.assert_array_equal(margin(loaded(aggregator.finish())), margin(loaded(reply)))


# --- clients and runs ------------------------------------------------------------------------


def test_binary_metrics_match_scikit_learn_with_ties() -> None:
    booster = xgb.train(PARAMS, data(0), 3)
    p = booster.predict(TEST)
    y = TEST.get_label()
    assert len(np.unique(p)) < len(p)  # shallow trees: many tied scores
    loss, metrics = binary_metrics(booster, TEST)
    assert metrics["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert metrics["accuracy"] == pytest.approx(np.mean((p > 0.5) == y))
    q = p.astype(np.float64)
    assert loss == pytest.approx(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)), rel=1e-6)


def test_a_multiclass_client_scores_log_loss_and_accuracy_as_scikit_learn_does() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(240, 5))
    y = np.digitize(x[:, 0] + 0.3 * rng.normal(size=240), [-0.5, 0.5]).astype(np.float32)
    train, valid = xgb.DMatrix(x[:160], label=y[:160]), xgb.DMatrix(x[160:], label=y[160:])
    params = {"objective": "multi:softprob", "num_class": 3, "max_depth": 2, "nthread": 1}
    client = XgbBaggingClient(train, valid, params, local_rounds=3)
    arrays, _, _ = client.fit(empty_arrays(), {})
    loss, n, metrics = client.evaluate(arrays, {})
    p = booster_from_arrays(arrays).predict(valid)  # type: ignore[union-attr]
    assert n == 80 and p.shape == (80, 3)
    assert loss == pytest.approx(log_loss(y[160:], p, labels=[0, 1, 2]), rel=1e-5)
    assert metrics["accuracy"] == pytest.approx(np.mean(p.argmax(axis=1) == y[160:]))
    assert multiclass_metrics(None, valid, 3)[0] == pytest.approx(np.log(3))
    with pytest.raises(ValueError, match="multi:softprob"):
        multiclass_metrics(xgb.train(PARAMS, data(0), 1), TEST, 3)


def test_auc_is_left_out_for_one_class() -> None:
    one_class = xgb.DMatrix(np.zeros((4, 5)), label=np.ones(4))
    assert "auc" not in binary_metrics(None, one_class)[1]


def test_local_rounds_must_be_a_positive_count() -> None:
    with pytest.raises(ValueError, match="local_rounds must be an int >= 1, got 0"):
        XgbBaggingClient(data(0), TEST, PARAMS, local_rounds=0)


def client_fn(cls: type[XgbClient]) -> Callable[[Context], XgbClient]:
    def make(context: Context) -> XgbClient:
        return cls(data(context.partition_id), data(50 + context.partition_id, 100), PARAMS)

    return make


def test_a_bagging_run_learns_and_its_model_grows_by_every_clients_tree() -> None:
    auc = lambda rnd, arrays: binary_metrics(booster_from_arrays(arrays), TEST)  # noqa: E731
    app = ServerApp(FedXgbBagging(evaluate_fn=auc), num_rounds=3)  # get_arrays gives the start
    result = run_simulation(app, client_fn(XgbBaggingClient), num_clients=3)
    assert loaded(result.arrays).num_boosted_rounds() == 3 * 3
    last = result.history.rounds[-1]
    assert last.replies == 3 and last.centralized["auc"] > 0.85
    assert last.evaluate["auc"] > 0.85 and "train_logloss" in last.fit


def test_a_cyclic_run_hands_the_model_from_client_to_client() -> None:
    auc = lambda rnd, arrays: binary_metrics(booster_from_arrays(arrays), TEST)  # noqa: E731
    app = ServerApp(FedXgbCyclic(evaluate_fn=auc), num_rounds=4, initial_arrays=empty_arrays())
    result = run_simulation(app, client_fn(XgbCyclicClient), num_clients=3)
    assert loaded(result.arrays).num_boosted_rounds() == 4
    assert [r.replies for r in result.history.rounds[1:]] == [1, 1, 1, 1]
    assert result.history.rounds[-1].centralized["auc"] > 0.8


# --- helpers ---------------------------------------------------------------------------------


def base_score(booster: xgb.Booster) -> float:
    text = json.loads(booster.save_raw("json"))["learner"]["learner_model_param"]["base_score"]
    return float(text.strip("[]"))


def trees_margin(booster: xgb.Booster) -> np.ndarray:
    """What a binary booster's trees add to the margin of its base score."""
    p = base_score(booster)
    return margin(booster) - np.log(p / (1 - p))


def test_a_saved_model_becomes_a_booster_file_xgboost_loads(tmp_path: Path) -> None:
    booster = xgb.train(PARAMS, data(0), 3)
    save_arrays(booster_to_arrays(booster), tmp_path / "model.npz")  # `pollinate run --out`
    for name in ("model.json", "model.ubj"):
        path = save_native(load_arrays(tmp_path / "model.npz"), tmp_path / name)
        loaded = xgb.Booster(model_file=str(path))
        np.testing.assert_allclose(loaded.predict(data(1)), booster.predict(data(1)))
    with pytest.raises(ValueError, match="no trees"):
        save_native(empty_arrays(), tmp_path / "empty.json")
