"""Plain rounds: each sampled node trains and replies; each update is screened and folded.

Invariants:
- a reply is aggregated at most once, and only for a task of the current stage
  (``stages.py``);
- no update counts for more than its bounded share (``screen.py``, ``bounds.py``);
- a round that lost more fit tasks than ``failure_tolerance`` allows, or whose strategy
  cannot aggregate what it got, keeps the previous global model.

Where the grid offers it and nothing can tell the difference (``summing.py``), a round's
updates are screened and summed where they are computed, and the round merges one sum per
worker: it records the same events and the same history as when each update comes here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from pollinate.aggregate.mean import PartialSum
from pollinate.loop.evaluate import evaluate
from pollinate.loop.events import Stage
from pollinate.loop.recorder import RoundRecorder
from pollinate.loop.screen import Screen
from pollinate.loop.stages import Problem, Stages, Tasks, reply_problem
from pollinate.loop.summing import Answered, MergesSums, Summing, summing_for
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
        tasks = dict.fromkeys(nodes, (arrays, config))
        summed = summing_for(
            self.stages.grid.sums_updates, validation, strategy.updates_like_model, aggregator
        )
        if summed is not None:
            metrics = self._fit_summed(rounds, tasks, screen, *summed)
        else:
            early = Provisional(aggregator)
            del aggregator  # held by ``early`` alone, so that a fresh one may reuse its memory
            metrics, aggregator = self._fit_each(rounds, tasks, screen, early)
        rounds.count_fit(len(metrics))
        rounds.record.fit = strategy.aggregate_fit_metrics(metrics)
        return finish_fit(rounds, strategy, arrays, aggregator, len(nodes))

    def _fit_each(
        self, rounds: RoundRecorder, tasks: Tasks, screen: Screen, early: Provisional
    ) -> tuple[list[tuple[int, Metrics]], FitAggregator]:
        """Each update comes here, is screened and folded (held ones provisionally, as they
        arrive): the (examples, metrics) of those folded (not the updates, which must go once
        folded), and the aggregator that holds them."""
        metrics: list[tuple[int, Metrics]] = []
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
            with rounds.aggregating():  # a held update's norm is taken here
                ready = screen.admit(result)
            metrics += fold(early.aggregator, ready, rounds)
            if screen.holding:
                early.add(screen.newest, rounds)
        with rounds.aggregating():
            held, notes, left_out = screen.close()
        for node, note in notes:
            rounds.bound(node, Stage.FIT, note)
        for node, reason in left_out:
            rounds.reject(node, reason)
        if not screen.holding:
            return metrics, early.aggregator
        return early.settle(
            held, rounds, lambda: self.strategy.start_fit(rounds.number, screen.current)
        )

    def _fit_summed(
        self,
        rounds: RoundRecorder,
        tasks: Tasks,
        screen: Screen,
        summing: Summing,
        aggregator: MergesSums,
    ) -> list[tuple[int, Metrics]]:
        """The grid screens and sums the updates where they are computed; here each task's
        facts are recorded as ``_fit_each`` records its reply, and each sum is merged."""
        metrics: list[tuple[int, Metrics]] = []
        for node, answer, problem in self._collect_summed(rounds, tasks, summing, aggregator):
            rejected = None if problem is not None else answer.rejected
            rounds.received(Stage.FIT, node, problem is None and rejected is None)
            if problem is not None:
                rounds.fail(node, Stage.FIT, *problem)
            elif rejected is not None:
                rounds.reject(node, rejected)
            else:
                result = FitResult(node, Arrays(), answer.reply.num_examples, answer.reply.metrics)
                metrics += [(r.num_examples, r.metrics) for r in screen.admit(result)]
        _held, notes, _left_out = screen.close()  # nothing held: no relative bound is on
        for node, note in notes:
            rounds.bound(node, Stage.FIT, note)
        return metrics

    def _collect_summed(
        self, rounds: RoundRecorder, tasks: Tasks, summing: Summing, aggregator: MergesSums
    ) -> Iterator[tuple[int, Answered, Problem | None]]:
        """As ``Stages.collect``, for a summed stage: each task's facts (or its timeout) once;
        every partial sum merged into ``aggregator`` as it comes. The grid says when a task
        ends (``pending.replied``): its sum may come later."""
        pending = self.stages.open(rounds, Stage.FIT, tasks)
        grid = self.stages.grid
        summed = grid.dispatch_summed(
            pending.instructions(), pending.timeout, summing, pending.replied
        )
        for item in summed:
            if isinstance(item, PartialSum):
                with rounds.aggregating():
                    aggregator.merge(item)
            elif (task := pending.answered_by(item.reply)) is not None:
                yield task.node_id, item, reply_problem(item.reply)
        for node, task, problem in pending.timed_out():
            yield node, Answered(task), problem

    def evaluate(self, rounds: RoundRecorder, arrays: Arrays) -> None:
        evaluate(self.stages, self.strategy, rounds, arrays)

    def close(self) -> None:
        pass


class Provisional:
    """A round's held updates, folded as they arrive rather than all once the round closes:
    if the bounds then move none of them (``Screen.close`` returns the very updates held, in
    order), the aggregator stands as it is, the same bits as folding them at the close; else
    it is dropped and the bounded updates are folded into a fresh one (``start_fit`` runs
    again; the round's updates are folded twice). A strategy's ``add`` changes only its
    aggregator (its state moves in ``finish``), so a dropped one leaves no trace. Why an
    update was unusable is recorded only once the round settles, and an ``add`` that raised
    anything else sends the round to a fresh fold, where it raises again only if the bounds
    kept that update (a far outlier left out never reaches the strategy, as before)."""

    def __init__(self, aggregator: FitAggregator) -> None:
        self._aggregator: FitAggregator | None = aggregator  # None once settled
        self._folded: list[tuple[FitResult, str | None]] = []  # each, and why it was unusable
        self._failed = False  # an add raised: only a fold at the close may raise

    @property
    def aggregator(self) -> FitAggregator:
        """The aggregator the updates go into until the round settles."""
        if self._aggregator is None:
            raise RuntimeError("this round's fold is settled: its aggregator was handed on")
        return self._aggregator

    def add(self, result: FitResult, rounds: RoundRecorder) -> None:
        aggregator, problem = self.aggregator, None
        try:
            with rounds.aggregating():
                aggregator.add(result)
        except UnusableUpdate as exc:
            problem = str(exc)
        except Exception:  # a strategy may raise anything: settled by a fresh fold
            self._failed = True
        self._folded.append((result, problem))

    def settle(
        self,
        held: list[FitResult],
        rounds: RoundRecorder,
        start: Callable[[], FitAggregator],
    ) -> tuple[list[tuple[int, Metrics]], FitAggregator]:
        """The (examples, metrics) of the updates folded and their aggregator, given the
        updates the bounds left (``held``); ``start`` makes a fresh aggregator."""
        aggregator, self._aggregator = self._aggregator, None
        folded, self._folded = self._folded, []
        same = len(held) == len(folded) and all(
            h is r for h, (r, _) in zip(held, folded, strict=True)
        )
        if aggregator is not None and same and not self._failed:
            metrics = []
            for result, problem in folded:
                if problem is None:
                    metrics.append((result.num_examples, result.metrics))
                else:
                    rounds.reject(result.node_id, problem)
            return metrics, aggregator
        del aggregator, folded  # before the fresh one, whose memory may then be reused
        fresh = start()
        return fold(fresh, held, rounds), fresh


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
