"""What every round protocol does with the Grid: sample nodes, send a stage's tasks, collect.

Invariants:
- sampling in round ``r`` depends only on ``(seed, r, stream)`` and the nodes available, so
  a seeded run repeats exactly and a resumed run samples as the uninterrupted one would
  have; with fewer nodes than the strategy needs, the round waits up to ``node_wait`` for
  them, then samples with the same generator;
- task ids depend only on ``(run, round, stage, node)``, so a resumed round asks for the same
  tasks again and a grid that kept their replies across a crash can hand them back;
- each task of a stage yields exactly once: its reply, or a failure at the stage's deadline
  (``deadline.py``); a reply for an unknown or finished task is dropped, logged;
- a reply carrying an error yields as a failure of the client (its words), or of the hub
  that lost the node (``Message.lost``), never as a reply.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np

from pollinate.loop.app import ServerApp
from pollinate.loop.deadline import StageClock, no_reply
from pollinate.loop.events import Stage
from pollinate.loop.grid import Grid, Timeout
from pollinate.loop.history import FailureKind
from pollinate.loop.recorder import RoundRecorder
from pollinate.records import Arrays, Config, Message, MessageKind
from pollinate.strategy.base import TooFewClients

Sampler = Callable[[Sequence[int], np.random.Generator], list[int]]
Tasks = Mapping[int, tuple[Arrays, Config]]
"""Each node's instruction for a stage: its arrays and config."""
Problem = tuple[FailureKind, str]
"""Why a task gave nothing usable: its kind, and the reason in words."""
Outcome = tuple[int, Message, "Problem | None"]
"""``(node, reply, problem)``: the node's reply, or its task (or error reply) and why it
failed."""


class Stages:
    """A run's access to its nodes, shared by the round protocols."""

    def __init__(self, grid: Grid, app: ServerApp, seed: int, run_id: str) -> None:
        self.grid, self.app, self.seed, self.run_id = grid, app, seed, run_id

    def rng(self, rnd: int, stream: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, rnd, stream])

    def sample(
        self, rounds: RoundRecorder, stage: Stage, sampler: Sampler, stream: int
    ) -> list[int]:
        """The strategy's sample from the nodes there now; with too few, from those there
        once enough came (back), up to ``node_wait`` seconds later. The same generator
        either way, so a run that waited samples as one that did not."""
        rnd = rounds.number
        try:
            return sampler(self.grid.nodes(), self.rng(rnd, stream))
        except TooFewClients as exc:
            rounds.waiting(len(self.grid.nodes()), exc.needed, stage, self.app.node_wait)
            nodes = self.grid.wait_for_nodes(exc.needed, self.app.node_wait)
        return sampler(nodes, self.rng(rnd, stream))

    def collect(
        self,
        rounds: RoundRecorder,
        stage: Stage,
        tasks: Tasks,
        kind: MessageKind | None = None,
    ) -> Iterator[Outcome]:
        """Send ``tasks`` as ``stage`` and yield one outcome per task as it ends.

        ``kind`` is the messages' kind when it is not the stage's name (the stages of secure
        aggregation).
        """
        pending = self.open(rounds, stage, tasks, kind)
        for reply in self.grid.dispatch(pending.instructions(), pending.timeout):
            task = pending.answered_by(reply)
            if task is not None:
                pending.replied()
                yield task.node_id, reply, reply_problem(reply)
        yield from pending.timed_out()

    def open(
        self,
        rounds: RoundRecorder,
        stage: Stage,
        tasks: Tasks,
        kind: MessageKind | None = None,
    ) -> Pending:
        """The stage's instructions, announced (``stage_started``), with their deadline."""
        rnd = rounds.number
        messages = (
            Message(
                kind=kind or MessageKind(stage),
                task_id=task_id(self.run_id, rnd, stage, node),
                run_id=self.run_id,
                round=rnd,
                node_id=node,
                arrays=arrays,
                config=config,
            )
            for node, (arrays, config) in tasks.items()
        )
        open_tasks = {message.task_id: message for message in messages}
        rounds.stage_started(stage, len(open_tasks))
        return Pending(rounds, open_tasks, self.app.stage_timeout(len(open_tasks)))


class Pending:
    """A stage's tasks not yet answered, by task id, and the stage's deadline."""

    def __init__(self, rounds: RoundRecorder, tasks: dict[str, Message], timeout: Timeout) -> None:
        self.rounds, self.tasks, self.timeout = rounds, tasks, timeout

    def instructions(self) -> list[Message]:
        return list(self.tasks.values())

    def answered_by(self, reply: Message) -> Message | None:
        """The open task ``reply`` answers, now closed; None (the reply is dropped, and
        logged) if it answers none: an unknown or finished task, or not from its node."""
        task = self.tasks.get(reply.task_id)
        if task is None or not reply.is_reply or reply.node_id != task.node_id:
            self.rounds.dropped(reply.task_id, reply.node_id)
            return None
        del self.tasks[reply.task_id]
        return task

    def replied(self) -> None:
        """A task ended with a reply: a deadline that waits for stragglers hears of it."""
        if isinstance(self.timeout, StageClock):
            self.timeout.replied()

    def timed_out(self) -> Iterator[Outcome]:
        """Each task still open, as failed at the deadline."""
        for task in self.tasks.values():
            yield task.node_id, task, (FailureKind.TIMEOUT, no_reply(self.timeout))


def reply_problem(reply: Message) -> Problem | None:
    """The failure a reply carries: its client's error, or the hub's word that it lost the
    node; None for a reply with no error."""
    if reply.error is None:
        return None
    if reply.lost:
        return FailureKind.LOST, reply.error
    return FailureKind.CLIENT, f"client failed: {reply.error}"


def task_id(run_id: str, rnd: int, stage: Stage | str, node: int) -> str:
    return f"{run_id}:{rnd}:{stage}:{node}"
