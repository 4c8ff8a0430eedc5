"""Plain rounds: each sampled node trains and replies; each update is screened and folded.

Invariants:
- a reply is aggregated at most once, and only for a task of the current stage
  (``stages.py``);
- no update counts for more than its bounded share (``screen.py``, ``bounds.py``);
- a round that lost more fit tasks than ``failure_tolerance`` allows, or whose strategy
  cannot aggregate what it got, keeps the previous global model.
"""

from __future__ import annotations

from pollinate.loop.evaluate import evaluate
from pollinate.loop.events import Stage
from pollinate.loop.recorder import RoundRecorder
from pollinate.loop.screen import Screen
from pollinate.loop.stages import Stages
from pollinate.records import Arrays, Metrics
from pollinate.strategy.base import (
    FitAggregator,
    FitResult,
    Strategy,
    TooFewReplies,
    UnusableUpdate,
)


class PlainRounds:
    """Synchronous rounds in the clear: the hub sees each update."""

    def __init__(self, stages: Stages, strategy: Strategy) -> None:
        self.stages, self.strategy = stages, strategy

    def fit(self, rounds: RoundRecorder, arrays: Arrays) -> Arrays:
        strategy, rnd = self.strategy, rounds.number
        nodes = self.stages.sample(rounds, Stage.FIT, strategy.sample_fit, 0)
        config = strategy.configure_fit(rnd)
        aggregator = strategy.start_fit(rnd, arrays)
        validation = self.stages.app.validation
        screen = Screen(
            validation, arrays, len(nodes), strategy.updates_like_model, strategy.bounds_outliers
        )
        # (examples, metrics) of the folded updates: not the updates, which must go once folded
        metrics: list[tuple[int, Metrics]] = []
        tasks = dict.fromkeys(nodes, (arrays, config))
        for node, reply, problem in self.stages.collect(rounds, Stage.FIT, tasks):
            if problem is not None:
                rounds.received(Stage.FIT, node, False)
                rounds.fail(node, Stage.FIT, *problem)
                continue
            with rounds.aggregating():
                rejected = screen.problem(reply)
            rounds.received(Stage.FIT, node, rejected is None)
            if rejected is not None:
                rounds.reject(node, rejected)
                continue
            result = FitResult(node, reply.arrays, reply.num_examples, reply.metrics)
            metrics += fold(aggregator, screen.admit(result), rounds)
        with rounds.aggregating():
            held, notes, left_out = screen.close()
        for node, note in notes:
            rounds.bound(node, Stage.FIT, note)
        for node, reason in left_out:
            rounds.reject(node, reason)
        metrics += fold(aggregator, held, rounds)
        rounds.count_fit(len(metrics))
        rounds.record.fit = strategy.aggregate_fit_metrics(metrics)
        return finish_fit(rounds, strategy, arrays, aggregator, len(nodes))

    def evaluate(self, rounds: RoundRecorder, arrays: Arrays) -> None:
        evaluate(self.stages, self.strategy, rounds, arrays)

    def close(self) -> None:
        pass


def fold(
    aggregator: FitAggregator, results: list[FitResult], rounds: RoundRecorder
) -> list[tuple[int, Metrics]]:
    """Fold each result in; the (examples, metrics) of those the aggregator took."""
    folded = []
    for result in results:
        try:
            with rounds.aggregating():
                aggregator.add(result)
        except UnusableUpdate as exc:
            rounds.reject(result.node_id, str(exc))
            continue
        folded.append((result.num_examples, result.metrics))
    return folded


def finish_fit(
    rounds: RoundRecorder,
    strategy: Strategy,
    arrays: Arrays,
    aggregator: FitAggregator,
    sampled: int,
) -> Arrays:
    """The aggregate, unless the round lost more than the strategy tolerates."""
    if not rounds.record.replies:
        rounds.keep_model(f"none of the {sampled} fit tasks gave a usable update")
        return arrays
    if not rounds.tolerated(strategy.failure_tolerance, sampled):
        return arrays
    try:
        with rounds.aggregating():
            return aggregator.finish()
    except TooFewReplies as exc:
        rounds.keep_model(str(exc))
        return arrays
