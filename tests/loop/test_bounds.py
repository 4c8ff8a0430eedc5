"""Bounded influence: no single reply moves the model, or the federated metrics, by more
than its fair share (``loop/bounds.py`` applied by ``screen.py`` and the run loop)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import pytest

from pollinate import Arrays, Client, FedAvg, ServerApp, Validation
from pollinate.client import Context, handle
from pollinate.loop import Grid, run
from pollinate.loop.bounds import (
    bound_examples,
    lower_median,
    norm_bound,
    pull_toward,
    scale_change,
)
from pollinate.loop.events import Event, ReplyBounded
from pollinate.loop.grid import Timeout
from pollinate.loop.screen import RecentBounds, Screen
from pollinate.records import Message
from pollinate.strategy.base import FitResult

ZERO = Arrays({"w": np.zeros(4)})

# --- the pure parts, on hand-computed cases ------------------------------------------------


def test_the_lower_median_is_the_smaller_middle_value() -> None:
    assert lower_median([5.0]) == 5.0
    assert lower_median([1.0, 2**62]) == 1.0  # one of two cannot raise it
    assert lower_median([3.0, 1.0, 2.0]) == 2.0
    with pytest.raises(ValueError, match="no values"):
        lower_median([])


def test_example_claims_are_bounded_by_a_multiple_of_the_median_and_the_cap() -> None:
    assert bound_examples([1, 2, 2**62], 5.0, None) == [1, 2, 10]
    assert bound_examples([1, 2, 2**62], None, 1000) == [1, 2, 1000]
    assert bound_examples([100, 120, 90], 5.0, None) == [100, 120, 90]  # honest: untouched
    assert bound_examples([], 5.0, None) == []


def test_the_norm_bound_is_a_multiple_of_the_lower_median_of_the_changes_that_moved() -> None:
    assert norm_bound([2.0, 4.0, 60.0], 3.0) == 12.0
    assert norm_bound([0.0, 0.0, 2.0, 4.0], 3.0) == 6.0  # unchanged models do not lower it
    assert norm_bound([7.0], 3.0) == float("inf")  # alone, nothing to compare with


def test_scale_change_scales_only_the_change_of_float_arrays() -> None:
    current = Arrays({"w": np.array([1.0, 1.0], np.float32), "n": np.array([3], np.int64)})
    sent = Arrays({"w": np.array([5.0, -3.0], np.float32), "n": np.array([9], np.int64)})
    scaled = scale_change(sent, current, 0.25)
    assert scaled["w"].tolist() == [2.0, 0.0] and scaled["w"].dtype == np.float32
    assert scaled["n"].tolist() == [9]


def test_pull_toward_moves_a_far_update_onto_the_radius_and_leaves_a_near_one() -> None:
    center = Arrays({"w": np.array([1.0, 1.0])})
    far = Arrays({"w": np.array([4.0, 5.0])})  # distance 5
    assert pull_toward(far, center, 5.0, 1.0)["w"].tolist() == pytest.approx([1.6, 1.8])
    assert pull_toward(far, center, 5.0, 5.0) is far


# --- the screen: the steer attack of 2026-12-06 --------------------------------------------


def fit_result(node: int, change: float, examples: int) -> FitResult:
    return FitResult(node, Arrays({"w": np.full(4, change)}), examples, {})


@pytest.mark.parametrize("honest_nodes", [1, 2, 4, 9])
def test_one_node_sending_minus_five_times_the_model_with_2_62_examples_moves_it_boundedly(
    honest_nodes: int,
) -> None:
    current = Arrays({"w": np.full(4, 3.0)})
    honest = [
        FitResult(n, Arrays({"w": np.full(4, 4.0 + 0.01 * n)}), 10, {}) for n in range(honest_nodes)
    ]
    hostile = FitResult(99, Arrays({"w": -5.0 * current["w"]}), 2**62, {})
    screen = Screen(Validation(), current, expected=honest_nodes + 1)
    for result in [*honest, hostile]:
        assert screen.admit(result) == []
    passed, notes, left_out = screen.close()
    if honest_nodes + 1 >= 5:  # enough for the anomaly score: far out, so left out
        assert [node for node, _ in left_out] == [99] and passed == honest
        return
    bounded = passed[-1]
    assert bounded.num_examples <= 5 * 10  # examples_multiple x the median claim
    change = bounded.arrays["w"] - current["w"]
    median_norm = 2.0 + 0.02 * (honest_nodes // 2)  # the lower median, hostile included
    assert np.linalg.norm(change) <= 3 * median_norm + 1e-9
    assert 99 in {node for node, _ in notes}
    # the worst it can do to the mean: its bounded weight times its bounded change
    total = 10 * honest_nodes + bounded.num_examples
    mean = sum(r.num_examples * r.arrays["w"] for r in passed) / total
    honest_mean = sum(r.arrays["w"] for r in honest) / honest_nodes
    share = bounded.num_examples / total
    assert np.linalg.norm(mean - honest_mean) <= share * (3 * median_norm + 2.1) + 1e-9


def test_an_honest_outlier_counts_with_its_data_instead_of_being_dropped() -> None:
    rng = np.random.default_rng(0)
    agreeing = [FitResult(n, Arrays({"w": 1.0 + rng.normal(0, 0.1, 4)}), 50, {}) for n in range(9)]
    # one client (skewed data) steps about five typical distances away, its own direction
    outlier = FitResult(9, Arrays({"w": np.array([1.0, 1.0, 0.2, 0.2])}), 50, {})
    screen = Screen(Validation(), ZERO, expected=10)
    for result in [*agreeing, outlier]:
        screen.admit(result)
    passed, notes, left_out = screen.close()
    assert left_out == [] and [r.node_id for r in passed] == list(range(10))
    assert [node for node, _ in notes] == [9]
    assert (passed[9].arrays["w"][2:] < 0.95).all()  # its own direction still shows


def test_a_per_run_cap_bounds_claims_even_when_rounds_stream() -> None:
    off = Validation(
        anomaly_threshold=None, norm_multiple=None, examples_multiple=None, max_examples=100
    )
    screen = Screen(off, ZERO, expected=3)
    [admitted] = screen.admit(fit_result(1, 1.0, 10**9))
    assert admitted.num_examples == 100
    assert screen.close()[1] == [(1, "claimed 1000000000 examples, counted 100 (max_examples)")]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"norm_multiple": 0.5}, "norm_multiple must be >= 1"),
        ({"examples_multiple": 0}, "examples_multiple must be a finite number > 0"),
        ({"max_examples": 0}, "max_examples must be an int >= 1"),
        ({"max_examples": 1.5}, "max_examples must be an int >= 1"),
    ],
)
def test_impossible_bounds_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises((TypeError, ValueError), match=message):
        Validation(**kwargs)  # type: ignore[arg-type]


# --- evaluation replies -------------------------------------------------------------------


class Evaluating(Client):
    def fit(self, arrays, config):  # type: ignore[no-untyped-def]
        return arrays, 1, {}

    def evaluate(self, arrays, config):  # type: ignore[no-untyped-def]
        return 2.0, 10, {"accuracy": 0.5}


Rewrite = Callable[[Message], Message]


class Grid3(Grid):
    """Three nodes answering honestly, except node 2, whose evaluate reply ``hostile``
    rewrites."""

    def __init__(self, hostile: Rewrite) -> None:
        self.hostile = hostile

    def nodes(self) -> list[int]:
        return [0, 1, 2]

    def dispatch(self, instructions: Sequence[Message], timeout: Timeout) -> Iterator[Message]:
        for task in instructions:
            context = Context(node_id=task.node_id, partition_id=0, num_partitions=1)
            reply = handle(lambda ctx: Evaluating(), context, task)
            if task.kind == "evaluate" and task.node_id == 2:
                reply = self.hostile(reply)
            yield reply


def evaluate_with(hostile: Rewrite, validation: Validation | None = None) -> tuple[dict, list]:  # type: ignore[type-arg]
    events: list[Event] = []
    app = ServerApp(
        FedAvg(), num_rounds=1, initial_arrays=ZERO, validation=validation or Validation()
    )
    result = run(Grid3(hostile), app, on_event=events.append)
    return result.history.rounds[1].evaluate, events


def test_an_evaluate_reply_claiming_1e15_examples_with_loss_0_counts_its_fair_share() -> None:
    def hijack(reply: Message) -> Message:
        return dataclasses.replace(reply, loss=0.0, num_examples=10**15, metrics={"accuracy": 1.0})

    evaluate, events = evaluate_with(hijack)
    # the claim counts 5 x the median claim (10): 50 against the honest 10 + 10
    assert evaluate["loss"] == pytest.approx((10 * 2.0 + 10 * 2.0 + 50 * 0.0) / 70)
    assert evaluate["accuracy"] == pytest.approx((10 * 0.5 + 10 * 0.5 + 50 * 1.0) / 70)
    assert evaluate["accuracy"] < 1.0
    [bounded] = [e for e in events if isinstance(e, ReplyBounded)]
    assert (bounded.stage, bounded.node_id) == ("evaluate", 2)


def test_an_evaluate_reply_with_a_non_finite_metric_is_a_failure() -> None:
    def nan(reply: Message) -> Message:
        return dataclasses.replace(reply, metrics={"accuracy": float("nan")})

    evaluate, _ = evaluate_with(nan)
    assert evaluate == {"loss": pytest.approx(2.0), "accuracy": pytest.approx(0.5)}


def test_the_per_run_cap_bounds_evaluate_claims_too() -> None:
    def big(reply: Message) -> Message:
        return dataclasses.replace(reply, loss=0.0, num_examples=30)

    evaluate, _ = evaluate_with(big, Validation(examples_multiple=None, max_examples=10))
    assert evaluate["loss"] == pytest.approx((10 * 2.0 + 10 * 2.0 + 10 * 0.0) / 30)


# --- updates one at a time (the asynchronous loop) -----------------------------------------


def test_recent_bounds_hold_each_update_to_the_last_ones() -> None:
    bounds = RecentBounds(Validation(), window=3)
    for node in range(3):  # honest: change norm 2, 10 examples
        kept, notes = bounds.bound(fit_result(node, 1.0, 10), ZERO)
        assert notes == [] and kept == fit_result(node, 1.0, 10)
    hostile, notes = bounds.bound(fit_result(9, -100.0, 2**62), ZERO)
    assert hostile.num_examples == 50  # 5 x the median of the window, itself included
    assert np.linalg.norm(hostile.arrays["w"]) == pytest.approx(6.0)  # 3 x the median norm
    assert len(notes) == 2
