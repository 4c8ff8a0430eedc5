"""The run loop: rounds of fit -> centralized evaluation -> federated evaluation -> record.

It talks to nodes only through a ``Grid`` and knows nothing of transport, so the same loop
runs in simulation and in deployment. What a round does with nodes belongs to the run's
``RoundProtocol`` (``protocol.py``: plain, SecAgg+ or buffered rounds), chosen once; what
happened is recorded by the ``Recorder`` (``recorder.py``), once, for every protocol.

Invariants:
- the strategy is asked before every round whether the run is finished (``finished``); a
  run it stops ends normally, with the rounds done;
- a run in which ``ServerApp.max_failed_rounds`` rounds in a row got no usable fit update
  fails with a ``RunError`` that quotes the last round's first failure: it is broken, and
  more rounds would only fail the same way;
- ``on_checkpoint`` sees every completed round (round 0 included) before anyone else does:
  a round that was reported was recorded first;
- a resumed run goes on from its checkpoint's round as if it had never stopped; the first
  round it runs is marked ``resumed``.

The protocols add theirs (``plain.py``, ``secure.py``, ``buffered.py``, ``stages.py``):
sampling depends only on the seed and the round, task ids only on run, round, stage and
node, a reply counts at most once and for at most its bounded share, and a stage closes at
its deadline.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from pollinate.errors import RunError
from pollinate.loop.app import ServerApp
from pollinate.loop.checkpoint import Checkpoint
from pollinate.loop.grid import Grid
from pollinate.loop.history import History
from pollinate.loop.protocol import RoundProtocol, protocol_for
from pollinate.loop.recorder import (
    CheckpointHandler,
    EventHandler,
    Recorder,
    RoundRecorder,
)
from pollinate.loop.stages import Stages, task_id
from pollinate.records import Arrays, Message, MessageKind, Scalar
from pollinate.strategy.base import ascending

log = logging.getLogger("pollinate.loop")

__all__ = ["CheckpointHandler", "EventHandler", "RunResult", "run"]


@dataclass
class RunResult:
    """What a finished run leaves: the final global arrays, the history, and why the run
    stopped before ``num_rounds`` if the strategy ended it (``Strategy.finished``)."""

    arrays: Arrays
    history: History = field(default_factory=History)
    stopped: str | None = None


def failed_streak(history: History) -> int:
    """How many rounds in a row, up to the last one, got no usable fit update."""
    streak = 0
    for record in reversed(history.rounds):
        if record.round == 0 or record.replies or record.applied:
            break
        streak += 1
    return streak


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
    recorder = Recorder(
        run_id, on_event or (lambda event: None), on_checkpoint or (lambda checkpoint: None)
    )
    stages = Stages(grid, app, seed, run_id)
    protocol = protocol_for(app, stages)
    try:
        return _Loop(stages, recorder, protocol).run(resume_from)
    finally:
        protocol.close()


class _Loop:
    def __init__(self, stages: Stages, recorder: Recorder, protocol: RoundProtocol) -> None:
        self.stages, self.recorder, self.protocol = stages, recorder, protocol
        self.app, self.strategy = stages.app, stages.app.strategy

    def run(self, resume_from: Checkpoint | None) -> RunResult:
        history = self.recorder.history
        if resume_from is None:
            arrays = self._round_zero()
            first = 1
        else:
            arrays = resume_from.arrays
            history.rounds[:] = resume_from.history.rounds
            self.strategy.load_state(resume_from.strategy_state)
            first = resume_from.round + 1
        for rnd in range(first, self.app.num_rounds + 1):
            reason = self.strategy.finished(rnd - 1)
            if reason is not None:
                self.recorder.stopped(rnd - 1, reason)
                return RunResult(arrays, history, stopped=reason)
            rounds = self.recorder.round(rnd)
            rounds.record.resumed = resume_from is not None and rnd == first
            arrays = self._round(rounds, arrays)
            self._fail_if_broken(history)
        return RunResult(arrays, history)

    def _fail_if_broken(self, history: History) -> None:
        limit = self.app.max_failed_rounds
        last = history.rounds[-1]
        if limit is None or failed_streak(history) < limit:
            return
        why = f"; the last round's first failure: {last.failed[0].reason}" if last.failed else ""
        raise RunError(
            f"no fit task gave a usable update in {limit} rounds in a row (rounds "
            f"{last.round - limit + 1} to {last.round}), so the run stops{why}.\nHint: fix "
            "what the failures say; ServerApp(max_failed_rounds=...) sets how many such rounds "
            "a run tolerates (None: no limit)."
        )

    def _round_zero(self) -> Arrays:
        arrays = self.app.initial_arrays
        if arrays is None:
            arrays = self._initial_arrays()
        rounds = self.recorder.round(0)
        rounds.record.centralized = self._centralized(0, arrays)
        self.recorder.finish(rounds, arrays, self.strategy.state())
        return arrays

    def _round(self, rounds: RoundRecorder, arrays: Arrays) -> Arrays:
        arrays = self.protocol.fit(rounds, arrays)
        rounds.record.centralized = self._centralized(rounds.number, arrays)
        self.protocol.evaluate(rounds, arrays)
        record = rounds.record
        rounds.summary(f"{record.replies} replies, {record.failures} failures")
        self.recorder.finish(rounds, arrays, self.strategy.state())
        return arrays

    def _centralized(self, rnd: int, arrays: Arrays) -> dict[str, Scalar]:
        result = self.strategy.evaluate(rnd, arrays)
        if result is None:
            return {}
        loss, metrics = result
        return {"loss": float(loss), **metrics}

    def _initial_arrays(self) -> Arrays:
        grid, run_id = self.stages.grid, self.stages.run_id
        nodes = ascending(grid.nodes())
        if not nodes:  # a run submitted before its nodes connected waits for the first
            self.recorder.log.warning(
                "run %s: no client is connected to provide the initial arrays; waiting up to "
                "%gs for one (ServerApp.node_wait)",
                run_id,
                self.app.node_wait,
            )
            nodes = ascending(grid.wait_for_nodes(1, self.app.node_wait))
        if not nodes:
            raise RunError(
                f"no client connected within {self.app.node_wait:g}s to provide the initial "
                "arrays.\nHint: start the nodes, or give ServerApp(initial_arrays=...)"
            )
        node = int(nodes[int(self.stages.rng(0, 2).choice(len(nodes)))])
        task = Message(
            MessageKind.GET_ARRAYS,
            task_id=task_id(run_id, 0, "get_arrays", node),
            run_id=run_id,
            node_id=node,
        )
        for reply in grid.dispatch([task], self.app.stage_timeout(1)):
            if reply.task_id == task.task_id and reply.error is None:
                self.recorder.log.info("run %s: initial arrays from node %d", run_id, node)
                return reply.arrays
            raise RunError(f"node {node} could not provide the initial arrays: {reply.error}")
        raise RunError(f"node {node} did not provide the initial arrays in time")
