"""q-FedAvg as the run loop uses it: the loss each client reports, and what it does with it.
The step itself is specified in tests/aggregate/test_fair.py."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from pollinate.aggregate import QFedAvgStep
from pollinate.errors import RunError
from pollinate.records import Arrays, Metrics
from pollinate.strategy import STRATEGIES, FedAvg, FitResult, QFedAvg, Strategy, strategy_class


def current() -> Arrays:
    return Arrays({"w": np.zeros(3, np.float32), "n": np.zeros(2, np.int64)})


def result(node: int, value: float, metrics: Metrics, num_examples: int = 10) -> FitResult:
    arrays = Arrays({n: np.full(a.shape, value, a.dtype) for n, a in current().items()})
    return FitResult(node, arrays, num_examples, metrics)


def aggregate(strategy: Strategy, results: list[FitResult]) -> Arrays:
    aggregator = strategy.start_fit(1, current())
    for r in results:
        aggregator.add(r)
    return aggregator.finish()


def test_qfedavg_folds_each_reply_with_its_loss_before_training() -> None:
    results = [result(1, 2.0, {"loss_before": 1.5}), result(2, 6.0, {"loss_before": 0.5})]
    expected = QFedAvgStep(current(), q=2.0, lipschitz=4.0)
    for r in results:
        expected.add(r.arrays, float(r.metrics["loss_before"]))
    assert aggregate(QFedAvg(q=2.0, lipschitz=4.0), results) == expected.result()


def test_with_q_zero_it_is_fedavg_over_equal_example_counts() -> None:
    results = [result(k, 3.0 * k, {"loss_before": 1.0 + k}) for k in range(1, 5)]
    got = aggregate(QFedAvg(q=0.0, lipschitz=100.0), results)
    assert got == aggregate(FedAvg(), results)


def test_the_loss_key_can_be_named() -> None:
    results = [result(1, 2.0, {"train_loss_start": 1.0}), result(2, 4.0, {"train_loss_start": 2})]
    got = aggregate(QFedAvg(q=1.0, lipschitz=1.0, loss_key="train_loss_start"), results)
    assert got["w"].dtype == np.float32


def test_a_reply_without_the_loss_stops_the_run_saying_what_to_report() -> None:
    strategy = QFedAvg(q=1.0, lipschitz=10.0)
    with pytest.raises(RunError) as caught:
        aggregate(strategy, [result(1, 2.0, {"loss_before": 1.0}), result(7, 2.0, {"acc": 0.9})])
    message = str(caught.value)
    assert "node 7 sent no 'loss_before' metric" in message
    assert "\nHint: " in message and "{'loss_before': loss}" in message
    assert "QFedAvg(loss_key=...)" in message


@pytest.mark.parametrize("loss", ["high", -1.0, float("nan"), float("inf"), True])
def test_a_loss_that_is_not_a_finite_number_at_least_zero_stops_the_run(loss: Any) -> None:
    with pytest.raises(RunError, match=f"node 3 sent {loss!r} as its 'loss_before' metric"):
        aggregate(QFedAvg(q=1.0, lipschitz=10.0), [result(3, 2.0, {"loss_before": loss})])


def test_replies_with_zero_examples_are_left_out_and_need_no_loss() -> None:
    results = [result(1, 2.0, {"loss_before": 1.0}), result(2, 9.0, {"loss_before": 3.0})]
    empty = result(3, -50.0, {}, num_examples=0)
    strategy = QFedAvg(q=1.0, lipschitz=10.0)
    assert aggregate(strategy, [empty, *results]) == aggregate(strategy, results)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"q": -1.0, "lipschitz": 1.0}, ValueError),
        ({"q": float("inf"), "lipschitz": 1.0}, ValueError),
        ({"q": float("nan"), "lipschitz": 1.0}, ValueError),
        ({"q": "1", "lipschitz": 1.0}, TypeError),
        ({"q": 1.0, "lipschitz": 0.0}, ValueError),
        ({"q": 1.0, "lipschitz": -5.0}, ValueError),
        ({"q": 1.0, "lipschitz": True}, TypeError),
        ({"q": 1.0, "lipschitz": 1.0, "loss_key": ""}, TypeError),
        ({"q": 1.0, "lipschitz": 1.0, "loss_key": 3}, TypeError),
    ],
)
def test_impossible_arguments_are_refused_with_a_hint(
    kwargs: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error, match=r"\nHint: "):
        QFedAvg(**kwargs)


def test_a_config_can_name_qfedavg() -> None:
    assert strategy_class("QFedAvg") is QFedAvg is STRATEGIES["qfedavg"]
