"""Plain rounds fold a round's held updates as they arrive (``Provisional``): the aggregator
stands if the bounds move none of them, the same bits as folding them at the close; else the
bounded updates are folded afresh. Either way each unusable update is rejected once."""

from __future__ import annotations

import weakref
from dataclasses import replace

import numpy as np
import pytest

from pollinate import Arrays, FedAvg
from pollinate.loop.events import Event, UpdateRejected
from pollinate.loop.plain import Provisional, fold
from pollinate.loop.recorder import Recorder, RoundRecorder
from pollinate.records import Metrics
from pollinate.strategy.base import FitResult, UnusableUpdate

MODEL = Arrays({"w": np.zeros(3, np.float32)})


class Listing:
    """An aggregator that lists what it was given; an update whose metrics say "unusable"
    is one it cannot use."""

    def __init__(self) -> None:
        self.added: list[int] = []

    def add(self, result: FitResult) -> None:
        if result.metrics.get("unusable"):
            raise UnusableUpdate(f"node {result.node_id}'s update is of no use")
        if result.metrics.get("broken"):
            raise KeyError("the strategy cannot read this update")
        self.added.append(result.node_id)

    def finish(self) -> Arrays:
        return MODEL


def round_of(events: list[Event]) -> RoundRecorder:
    return Recorder("run", events.append, lambda checkpoint: None).round(1)


def update(node: int, value: float, unusable: bool = False, broken: bool = False) -> FitResult:
    metrics: Metrics = {"unusable": 1} if unusable else {"broken": 1} if broken else {}
    return FitResult(node, Arrays({"w": np.full(3, value, np.float32)}), 10 + node, metrics)


def never() -> Listing:
    raise AssertionError("no fresh aggregator is needed when the bounds moved nothing")


def test_updates_the_bounds_left_as_they_were_stand_as_folded() -> None:
    events: list[Event] = []
    rounds, early = round_of(events), Provisional(aggregator := Listing())
    held = [update(1, 1.0), update(2, 2.0, unusable=True), update(3, 3.0)]
    for result in held:
        early.add(result, rounds)
    assert not events  # an unusable update is not rejected before the round settles
    metrics, settled = early.settle(list(held), rounds, never)
    assert settled is aggregator and aggregator.added == [1, 3]
    assert metrics == [(11, {}), (13, {})]
    assert [
        (e.node_id, "of no use" in e.reason) for e in events if isinstance(e, UpdateRejected)
    ] == [(2, True)]


def test_a_bounded_or_left_out_update_makes_the_round_fold_afresh() -> None:
    events: list[Event] = []
    rounds, early = round_of(events), Provisional(Listing())
    held = [update(1, 1.0), update(2, 2.0, unusable=True), update(3, 9.0), update(4, 4.0)]
    for result in held:
        early.add(result, rounds)
    fresh = Listing()
    bounded = [held[0], held[1], replace(held[2], num_examples=5)]  # 3 bounded, 4 left out
    metrics, settled = early.settle(bounded, rounds, lambda: fresh)
    assert settled is fresh and fresh.added == [1, 3]
    assert metrics == [(11, {}), (5, {})]
    assert [e.node_id for e in events if isinstance(e, UpdateRejected)] == [2]  # once


def test_an_update_the_strategy_chokes_on_raises_only_if_the_bounds_keep_it() -> None:
    rounds = round_of([])
    early = Provisional(Listing())
    held = [update(1, 1.0), update(2, 50.0, broken=True), update(3, 3.0)]
    for result in held:
        early.add(result, rounds)  # raises nothing while the round is open
    fresh = Listing()
    metrics, settled = early.settle([held[0], held[2]], rounds, lambda: fresh)  # 2 left out
    assert settled is fresh and fresh.added == [1, 3] and len(metrics) == 2
    kept = Provisional(Listing())
    for result in held:
        kept.add(result, rounds)
    with pytest.raises(KeyError, match="cannot read"):
        kept.settle(list(held), rounds, Listing)


def test_the_dropped_aggregator_is_gone_before_a_fresh_one_is_made() -> None:
    rounds, early = round_of([]), Provisional(Listing())
    dropped = weakref.ref(early.aggregator)
    held = [update(1, 1.0), update(2, 2.0)]
    for result in held:
        early.add(result, rounds)

    def start() -> Listing:
        assert dropped() is None  # its memory may be the fresh one's
        return Listing()

    early.settle([held[0]], rounds, start)
    with pytest.raises(RuntimeError, match="settled"):
        early.add(held[1], rounds)


def test_a_mean_folded_as_updates_arrive_has_the_bits_of_one_folded_at_the_close() -> None:
    rng = np.random.default_rng(7)
    held = [
        FitResult(n, Arrays({"w": rng.standard_normal(1001).astype(np.float32)}), 3 + n, {})
        for n in range(6)
    ]
    events: list[Event] = []
    rounds = round_of(events)
    early = Provisional(FedAvg().start_fit(1, MODEL_1001))
    for result in held:
        early.add(result, rounds)
    _, settled = early.settle(list(held), rounds, never)
    at_close = FedAvg().start_fit(1, MODEL_1001)
    fold(at_close, held, rounds)
    assert settled.finish()["w"].tobytes() == at_close.finish()["w"].tobytes()


MODEL_1001 = Arrays({"w": np.zeros(1001, np.float32)})
