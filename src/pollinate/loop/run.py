"""The run loop: rounds of sample -> configure -> dispatch -> collect -> aggregate -> evaluate.

It talks to nodes only through a ``Grid`` and knows nothing of transport, so the same loop
runs in simulation and in deployment.

Invariants:
- a reply is aggregated at most once, and only for a task of the current stage;
- a stage closes at its deadline (``round_timeout``; by default derived from the stage's own
  replies, ``deadline.py``): replies later than that count as failures, so a node that
  never answers costs the round only its own reply;
- sampling in round ``r`` depends only on ``(seed, r)`` and the nodes available, so a seeded
  run repeats exactly and a resumed run samples as the uninterrupted one would have; with
  fewer nodes than the strategy needs, the round waits up to ``node_wait`` for them, then
  samples with the same RNG;
- no reply counts for more than its bounded share (``screen.py``, ``bounds.py``): in fit and
  in federated evaluation;
- task ids depend only on ``(run, round, stage, node)``, so a resumed round asks for the same
  tasks again and a grid that kept their replies across a crash can hand them back;
- the strategy is asked before every round whether the run is finished (``finished``); a
  run it stops ends normally, with the rounds done;
- ``on_checkpoint`` sees every completed round (round 0 included) before anyone else does:
  a round that was reported was recorded first.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from pollinate.errors import RunError
from pollinate.loop.app import ServerApp
from pollinate.loop.bounds import bound_examples
from pollinate.loop.buffered import BufferedLoop
from pollinate.loop.checkpoint import Checkpoint
from pollinate.loop.deadline import StageClock, no_reply
from pollinate.loop.events import (
    Event,
    ReplyBounded,
    ReplyReceived,
    RoundFinished,
    StageStarted,
    UpdateRejected,
)
from pollinate.loop.grid import Grid
from pollinate.loop.history import Failure, History, RoundRecord
from pollinate.loop.screen import Screen, evaluate_problem
from pollinate.loop.secure import SecureFit
from pollinate.loop.validate import arrays_problem
from pollinate.records import Arrays, Config, Message, Metrics, Scalar
from pollinate.secagg.config import SecAggConfig
from pollinate.strategy.base import (
    FitAggregator,
    FitResult,
    TooFewClients,
    TooFewReplies,
    UnusableUpdate,
)
from pollinate.strategy.fedbuff import FedBuff

log = logging.getLogger("pollinate.loop")

EventHandler = Callable[[Event], None]
Sampler = Callable[[Sequence[int], np.random.Generator], list[int]]
CheckpointHandler = Callable[[Checkpoint], None]


@dataclass
class RunResult:
    """What a finished run leaves: the final global arrays, the history, and why the run
    stopped before ``num_rounds`` if the strategy ended it (``Strategy.finished``)."""

    arrays: Arrays
    history: History = field(default_factory=History)
    stopped: str | None = None


def run(
    grid: Grid,
    app: ServerApp,
    *,
    seed: int = 0,
    run_id: str = "run",
    on_event: EventHandler | None = None,
    on_checkpoint: CheckpointHandler | None = None,
    resume_from: Checkpoint | None = None,
) -> RunResult:
    """Run ``app`` on the nodes behind ``grid`` for ``app.num_rounds`` rounds.

    ``on_checkpoint`` receives the run's state after every completed round, to store it;
    ``resume_from`` is such a state: the run goes on with the round after it, as if it had
    never stopped (the first round it runs is marked ``resumed`` in the history). An
    asynchronous strategy (``FedBuff``) runs steps instead of rounds: ``loop/buffered.py``.
    """
    loop = _Loop(grid, app, seed, run_id, on_event or (lambda event: None))
    return loop.run(on_checkpoint or (lambda checkpoint: None), resume_from)


class _Loop:
    def __init__(
        self, grid: Grid, app: ServerApp, seed: int, run_id: str, emit: EventHandler
    ) -> None:
        self.grid, self.app, self.strategy = grid, app, app.strategy
        self.seed, self.run_id, self.emit = seed, run_id, emit
        # every record carries the run id, so a hub can route it to that run's log
        self.log = logging.LoggerAdapter(log, {"run_id": run_id})

    def run(self, checkpoint: CheckpointHandler, resume_from: Checkpoint | None) -> RunResult:
        if resume_from is None:
            arrays, history = self._start(checkpoint)
            first = 1
        else:
            arrays, history = resume_from.arrays, resume_from.history
            self.strategy.load_state(resume_from.strategy_state)
            first = resume_from.round + 1
        if isinstance(self.strategy, FedBuff):  # asynchronous: steps, not rounds
            steps = BufferedLoop(
                self.grid, self.app, self.strategy, self.seed, self.run_id, self.emit
            )
            arrays = steps.run(arrays, history, first, checkpoint, resume_from is not None)
            return RunResult(arrays, history)
        for rnd in range(first, self.app.num_rounds + 1):
            reason = self.strategy.finished(rnd - 1)
            if reason is not None:
                self.log.warning("run %s stops after round %d: %s", self.run_id, rnd - 1, reason)
                return RunResult(arrays, history, stopped=reason)
            arrays, record = self._round(rnd, arrays)
            record.resumed = resume_from is not None and rnd == first
            history.rounds.append(record)
            checkpoint(
                Checkpoint(rnd, arrays, self.strategy.state(), History(list(history.rounds)))
            )
            self.emit(RoundFinished(record))
        return RunResult(arrays, history)

    def _start(self, checkpoint: CheckpointHandler) -> tuple[Arrays, History]:
        arrays = self.app.initial_arrays
        if arrays is None:
            arrays = self._initial_arrays()
        history = History([self._round_zero(arrays)])
        checkpoint(Checkpoint(0, arrays, self.strategy.state(), History(list(history.rounds))))
        self.emit(RoundFinished(history.rounds[0]))
        return arrays, history

    # --- rounds ---------------------------------------------------------------------------

    def _round_zero(self, arrays: Arrays) -> RoundRecord:
        started = time.perf_counter()
        record = RoundRecord(round=0, centralized=self._centralized(0, arrays))
        record.seconds = time.perf_counter() - started
        return record

    def _round(self, rnd: int, arrays: Arrays) -> tuple[Arrays, RoundRecord]:
        started = time.perf_counter()
        record = RoundRecord(round=rnd)
        arrays = self._fit(rnd, arrays, record)
        record.centralized = self._centralized(rnd, arrays)
        self._evaluate(rnd, arrays, record)
        record.seconds = time.perf_counter() - started
        self.log.info(
            "run %s round %d: %d replies, %d failures",
            self.run_id,
            rnd,
            record.replies,
            record.failures,
        )
        return arrays, record

    def _fit(self, rnd: int, arrays: Arrays, record: RoundRecord) -> Arrays:
        nodes = self._sample(rnd, "fit", self.strategy.sample_fit, 0)
        config = self.strategy.configure_fit(rnd)
        aggregator = self.strategy.start_fit(rnd, arrays)
        secure = self.app.secure_aggregation
        if secure is not None:
            return self._secure_fit(secure, rnd, nodes, arrays, config, record, aggregator)
        strategy = self.strategy
        screen = Screen(
            self.app.validation,
            arrays,
            len(nodes),
            strategy.updates_like_model,
            strategy.bounds_outliers,
        )
        # (examples, metrics) of the folded updates: not the updates, which must go once folded
        metrics: list[tuple[int, Metrics]] = []
        for node, reply, problem in self._collect(
            rnd, "fit", dict.fromkeys(nodes, (arrays, config))
        ):
            if problem is None and reply.error is not None:
                problem = f"client failed: {reply.error}"
            if problem is not None:
                self.emit(ReplyReceived(rnd, "fit", node, False))
                self._fail(record, rnd, node, "fit", problem)
                continue
            rejected = screen.problem(reply)
            self.emit(ReplyReceived(rnd, "fit", node, rejected is None))
            if rejected is not None:
                self._reject(record, rnd, node, rejected)
                continue
            result = FitResult(node, reply.arrays, reply.num_examples, reply.metrics)
            metrics += self._fold(aggregator, screen.admit(result), record, rnd)
        held, notes, left_out = screen.close()
        for node, note in notes:
            self._bounded(rnd, node, "fit", note)
        for node, reason in left_out:
            self._reject(record, rnd, node, reason)
        metrics += self._fold(aggregator, held, record, rnd)
        record.replies, record.failures = len(metrics), len(record.failed)
        record.fit = self.strategy.aggregate_fit_metrics(metrics)
        return self._apply(rnd, arrays, record, len(nodes), aggregator, bool(metrics))

    def _apply(
        self,
        rnd: int,
        arrays: Arrays,
        record: RoundRecord,
        sampled: int,
        aggregator: FitAggregator,
        any_folded: bool,
    ) -> Arrays:
        """The aggregate, unless the round lost more than the strategy tolerates."""
        tolerated = record.failures <= self.strategy.failure_tolerance * sampled
        if not any_folded or not tolerated:
            record.applied = False
            self.log.warning(
                "run %s round %d: %d of %d fit tasks failed or were rejected, more than "
                "failure_tolerance=%s allows; keeping the previous global model",
                self.run_id,
                rnd,
                record.failures,
                sampled,
                self.strategy.failure_tolerance,
            )
            return arrays
        try:
            return aggregator.finish()
        except TooFewReplies as exc:
            record.applied = False
            self.log.warning(
                "run %s round %d: %s; keeping the previous global model", self.run_id, rnd, exc
            )
            return arrays

    def _secure_fit(
        self,
        secure: SecAggConfig,
        rnd: int,
        nodes: list[int],
        arrays: Arrays,
        config: Config,
        record: RoundRecord,
        aggregator: FitAggregator,
    ) -> Arrays:
        """The fit as SecAgg+ (``secure.py``): the aggregator gets the mean as one result."""
        protocol = SecureFit(
            secure, self.run_id, lambda stage, tasks: self._collect(rnd, stage, tasks, "secagg")
        )
        outcome = protocol.run(rnd, nodes, arrays, config)
        for node, reason in outcome.failures:
            self._fail(record, rnd, node, "fit", reason)
        record.failures = len(record.failed)
        record.fit = self.strategy.aggregate_fit_metrics(outcome.metrics)
        if outcome.arrays is None:
            record.applied, record.aborted = False, outcome.aborted
            self.log.error(
                "run %s round %d: secure aggregation aborted, keeping the previous global "
                "model: %s",
                self.run_id,
                rnd,
                outcome.aborted,
            )
            return arrays
        problem = arrays_problem(outcome.arrays, arrays)
        if problem is not None:
            record.applied, record.aborted = False, f"the securely summed mean {problem}"
            self.log.error("run %s round %d: %s", self.run_id, rnd, record.aborted)
            return arrays
        record.replies = outcome.clients
        aggregator.add(FitResult(0, outcome.arrays, outcome.examples, {}, outcome.clients))
        return self._apply(rnd, arrays, record, len(nodes), aggregator, outcome.clients > 0)

    def _fold(
        self, aggregator: FitAggregator, results: list[FitResult], record: RoundRecord, rnd: int
    ) -> list[tuple[int, Metrics]]:
        """Fold each result in; the (examples, metrics) of those the aggregator took."""
        folded = []
        for result in results:
            try:
                aggregator.add(result)
            except UnusableUpdate as exc:
                self._reject(record, rnd, result.node_id, str(exc))
                continue
            folded.append((result.num_examples, result.metrics))
        return folded

    def _evaluate(self, rnd: int, arrays: Arrays, record: RoundRecord) -> None:
        nodes = self._sample(rnd, "evaluate", self.strategy.sample_evaluate, 1)
        if not nodes:
            return
        config = self.strategy.configure_evaluate(rnd)
        replies: list[Message] = []
        tasks = dict.fromkeys(nodes, (arrays, config))
        for node, reply, problem in self._collect(rnd, "evaluate", tasks):
            if problem is None:
                problem = evaluate_problem(reply)
            self.emit(ReplyReceived(rnd, "evaluate", node, problem is None))
            if problem is not None:
                self._fail(record, rnd, node, "evaluate", problem)
                continue
            replies.append(reply)
        # the same bound on claimed examples as fit updates: no reply outweighs its share
        validation = self.app.validation
        claims = [reply.num_examples for reply in replies]
        counts = bound_examples(claims, validation.examples_multiple, validation.max_examples)
        for reply, claim, count in zip(replies, claims, counts, strict=True):
            if count != claim:
                note = f"claimed {claim} examples, counted {count} (Validation's bounds)"
                self._bounded(rnd, reply.node_id, "evaluate", note)
        losses = [(n, float(r.loss or 0.0)) for n, r in zip(counts, replies, strict=True)]
        metrics = [(n, r.metrics) for n, r in zip(counts, replies, strict=True)]
        total = sum(n for n, _ in losses)
        if total > 0:
            loss = sum(n * value for n, value in losses) / total
            record.evaluate = {"loss": loss, **self.strategy.aggregate_evaluate_metrics(metrics)}

    def _centralized(self, rnd: int, arrays: Arrays) -> dict[str, Scalar]:
        result = self.strategy.evaluate(rnd, arrays)
        if result is None:
            return {}
        loss, metrics = result
        return {"loss": float(loss), **metrics}

    # --- dispatch and collection -----------------------------------------------------------

    def _collect(
        self, rnd: int, stage: str, tasks: Mapping[int, tuple[Arrays, Config]], kind: str = ""
    ) -> Iterator[tuple[int, Message, str | None]]:
        """Yield ``(node, reply, problem)`` once per task: a reply, or a timeout failure.

        ``tasks`` maps each node to its instruction's arrays and config; ``kind`` is the
        messages' kind when it is not the stage's name (the stages of secure aggregation).
        """
        pending = {
            f"{self.run_id}:{rnd}:{stage}:{node}": Message(
                kind=kind or stage,
                task_id=f"{self.run_id}:{rnd}:{stage}:{node}",
                run_id=self.run_id,
                round=rnd,
                node_id=node,
                arrays=arrays,
                config=config,
            )
            for node, (arrays, config) in tasks.items()
        }
        self.emit(StageStarted(rnd, stage, len(pending)))
        timeout = self.app.stage_timeout(len(pending))
        for reply in self.grid.dispatch(list(pending.values()), timeout):
            task = pending.get(reply.task_id)
            if task is None or not reply.is_reply or reply.node_id != task.node_id:
                self.log.warning(
                    "run %s round %d: dropped a reply for unknown or finished task %r from node %d",
                    self.run_id,
                    rnd,
                    reply.task_id,
                    reply.node_id,
                )
                continue
            del pending[reply.task_id]
            if isinstance(timeout, StageClock):
                timeout.replied()
            yield task.node_id, reply, None
        for task in pending.values():
            yield task.node_id, task, no_reply(timeout)

    def _initial_arrays(self) -> Arrays:
        nodes = sorted(self.grid.nodes())
        if not nodes:
            raise RunError("no clients are available to provide the initial arrays")
        node = int(self._rng(0, 2).choice(nodes))
        task = Message(
            "get_arrays",
            task_id=f"{self.run_id}:0:get_arrays:{node}",
            run_id=self.run_id,
            node_id=node,
        )
        for reply in self.grid.dispatch([task], self.app.stage_timeout(1)):
            if reply.task_id == task.task_id and reply.error is None:
                self.log.info("run %s: initial arrays from node %d", self.run_id, node)
                return reply.arrays
            raise RunError(f"node {node} could not provide the initial arrays: {reply.error}")
        raise RunError(f"node {node} did not provide the initial arrays in time")

    # --- helpers ---------------------------------------------------------------------------

    def _sample(self, rnd: int, stage: str, sampler: Sampler, stream: int) -> list[int]:
        """The strategy's sample from the nodes there now; with too few, from those there
        once enough came (back), up to ``node_wait`` seconds later. The same RNG either
        way, so a run that waited samples as one that did not."""
        try:
            return sampler(self.grid.nodes(), self._rng(rnd, stream))
        except TooFewClients as exc:
            self.log.warning(
                "run %s round %d: %d of the %d clients %s needs are connected; waiting up to "
                "%gs for more (ServerApp.node_wait)",
                self.run_id,
                rnd,
                len(self.grid.nodes()),
                exc.needed,
                stage,
                self.app.node_wait,
            )
            nodes = self.grid.wait_for_nodes(exc.needed, self.app.node_wait)
        return sampler(nodes, self._rng(rnd, stream))

    def _rng(self, rnd: int, stream: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, rnd, stream])

    def _fail(self, record: RoundRecord, rnd: int, node: int, stage: str, reason: str) -> None:
        record.failed.append(Failure(node, stage, reason))
        self.log.warning(
            "run %s round %d: %s from node %d failed: %s", self.run_id, rnd, stage, node, reason
        )

    def _bounded(self, rnd: int, node: int, stage: str, note: str) -> None:
        """A reply that counts, bounded to its fair share (``bounds.py``)."""
        self.emit(ReplyBounded(rnd, stage, node, note))
        self.log.warning(
            "run %s round %d: %s reply of node %d bounded: %s", self.run_id, rnd, stage, node, note
        )

    def _reject(self, record: RoundRecord, rnd: int, node: int, reason: str) -> None:
        """An update that arrived and did not pass validation (screen.py)."""
        record.failed.append(Failure(node, "fit", reason))
        record.rejected += 1
        self.emit(UpdateRejected(rnd, node, reason))
        self.log.warning(
            "run %s round %d: update from node %d rejected: %s", self.run_id, rnd, node, reason
        )
