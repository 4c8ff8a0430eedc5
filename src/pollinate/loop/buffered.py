"""Buffered asynchronous rounds: nodes train continuously; the model steps every K updates.

For ``FedBuff`` (``strategy/fedbuff.py``) there are no rounds to wait for. The loop keeps
``concurrency`` nodes training, each from the model version that was current when its task
was sent; it folds each update into the strategy's buffer the moment it arrives, weighted by
its staleness (how many steps the model took meanwhile), and applies the buffer as one step
once it holds K updates. A step is what a round is to the synchronous loop: one
``RoundRecord`` (``replies`` = updates in it, ``fit["staleness"]`` their mean staleness), one
centralized evaluation, one checkpoint, one ``RoundFinished``; ``num_rounds`` counts steps.

It runs on any Grid, with one ``dispatch`` call per task, made on a worker thread: a reply
is seen as soon as its node sends it, where a call with many tasks may yield them in the
order they were sent (SimulationGrid does) and so make a fast node's reply wait behind a
slow one's. Memory: one buffer the size of the model, plus the model of every version a
task in flight trained from (at most ``concurrency`` of them; a fresh run needs one or two).

Invariants:
- a node trains at most once from each model version: a fast node cannot fill a step with
  repeats of its update of one version, and with every node equally fast and K = the number
  of nodes each step holds one update per node from the last step (FedAvg, with a server
  learning rate);
- a reply is folded at most once, only for a task in flight, as the change from the arrays
  its task carried;
- no step waits for a particular node: a step closes as soon as it holds K updates, or when
  no task is in flight and no node may take one (a fleet smaller than K, or nodes that
  failed), with the updates it has;
- a task's id is ``run:round:fit:node``, its round the step it was sent for (the version it
  trains from, plus one): unique by the first invariant, and a run resumed after step ``v``
  first asks for the tasks the lost run sent after step ``v``, so a grid that recorded their
  replies (the hub) hands them back;
- ``on_checkpoint`` sees every step before ``RoundFinished`` reports it.

Each update is bounded (``screen.RecentBounds``) against the last four steps' worth of
updates, as counted: its example count to ``examples_multiple`` x their median claim, its change to
``norm_multiple`` x their median norm; the run's first updates, with nothing before them,
are bounded only by ``max_examples`` and ``max_norm``.

A run ends with tasks in flight; their replies are dropped. The engine withdraws them when it
closes its grid (``run_simulation`` does; the hub closes a run's grid when the run ends).
Unlike a synchronous run, an asynchronous one does not repeat exactly from its seed: which
update lands in which step depends on when replies arrive.
"""

from __future__ import annotations

import functools
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from pollinate.aggregate.staleness import BufferedStep
from pollinate.errors import RunError
from pollinate.loop.app import ServerApp
from pollinate.loop.deadline import no_reply
from pollinate.loop.events import Stage
from pollinate.loop.history import FailureKind
from pollinate.loop.recorder import RoundRecorder
from pollinate.loop.screen import RecentBounds, Screen
from pollinate.loop.stages import Problem, Stages, reply_problem, task_id
from pollinate.records import Arrays, Config, Message, MessageKind, Metrics
from pollinate.strategy.base import FitResult

_Outcome = tuple[str, Message | Exception | None]
"""``(task id, what its dispatch yielded)``: a reply, the grid's exception, or None when the
dispatch ended."""


class BufferedStrategy(Protocol):
    """What the buffered protocol asks of its strategy (``FedBuff`` is one)."""

    buffer_size: int
    failure_tolerance: float

    @property
    def min_available_clients(self) -> int: ...
    def configure_fit(self, round: int) -> Config: ...
    def aggregate_fit_metrics(self, results: list[tuple[int, Metrics]]) -> Metrics: ...
    def training_slots(self, available: int) -> int: ...
    def choose(self, idle: Sequence[int], count: int, rng: np.random.Generator) -> list[int]: ...
    def staleness_weight(self, staleness: int) -> float: ...
    def start_step(self, current: Arrays) -> BufferedStep: ...


@dataclass(frozen=True, slots=True)
class _InFlight:
    message: Message  # its arrays are the version it trains from
    version: int


@dataclass
class _Step:
    """What a step gathers until it closes."""

    rounds: RoundRecorder
    arrays: Arrays  # the model it moves: version number - 1
    buffer: BufferedStep
    config: Config
    folded: list[tuple[int, Metrics, int]] = field(default_factory=list)
    """(examples, metrics, staleness) of each update in the buffer."""

    @property
    def number(self) -> int:
        return self.rounds.number


class BufferedRounds:
    """Carries out the steps of an asynchronous run, one ``fit`` call per step; tasks stay
    in flight from one step to the next."""

    def __init__(self, stages: Stages, strategy: BufferedStrategy) -> None:
        self.stages, self.strategy = stages, strategy
        self.grid, self.app = stages.grid, stages.app
        self._outcomes: queue.Queue[_Outcome] = queue.Queue()
        self._in_flight: dict[str, _InFlight] = {}
        self._trained_from: dict[int, int] = {}  # node -> the version of its last task
        self._rng: np.random.Generator | None = None
        self._workers = _Workers(f"pollinate-{stages.run_id}")
        # the relative bounds against the last four steps' worth of updates
        self._bounds = RecentBounds(self.app.validation, 4 * strategy.buffer_size)

    def fit(self, rounds: RoundRecorder, arrays: Arrays) -> Arrays:
        """One step from ``arrays`` (the model after the step before)."""
        if self._rng is None:
            # seeded by the first step, so a resumed run chooses as a fresh one from there would
            self._rng = self.stages.rng(rounds.number, 3)
        step = _Step(
            rounds,
            arrays,
            self.strategy.start_step(arrays),
            self.strategy.configure_fit(rounds.number),
        )
        rounds.stage_started(Stage.FIT, self.strategy.buffer_size)
        self._send(step)
        while len(step.folded) < self.strategy.buffer_size and self._in_flight:
            self._receive(step, *self._outcomes.get())
            self._send(step)
        return self._apply(step)

    def evaluate(self, rounds: RoundRecorder, arrays: Arrays) -> None:
        """None: every node is busy training (``evaluate_fn`` evaluates each step)."""

    def close(self) -> None:
        self._workers.close()

    def _apply(self, step: _Step) -> Arrays:
        rounds, folded = step.rounds, step.folded
        rounds.count_fit(len(folded))
        fit = dict(self.strategy.aggregate_fit_metrics([(n, m) for n, m, _ in folded]))
        if folded:
            fit["staleness"] = sum(tau for _, _, tau in folded) / len(folded)
        rounds.record.fit = fit
        ended = rounds.record.replies + rounds.record.failures
        if not folded:
            rounds.keep_model(f"none of the {ended} fit tasks that ended gave a usable update")
            return step.arrays
        if not rounds.tolerated(self.strategy.failure_tolerance, ended):
            return step.arrays
        with rounds.aggregating():
            return step.buffer.finish()

    # --- tasks out ---------------------------------------------------------------------------

    def _send(self, step: _Step) -> None:
        """Give tasks to free nodes that have not trained from this version yet, up to
        ``concurrency`` in flight."""
        version = step.number - 1
        available = self.grid.nodes()
        needed = self.strategy.min_available_clients
        if not self._in_flight and len(available) < needed:
            step.rounds.waiting(len(available), needed, "FedBuff", self.app.node_wait)
            available = self.grid.wait_for_nodes(needed, self.app.node_wait)
        if not self._in_flight and len(available) < needed:
            raise RunError(
                f"FedBuff needs {needed} clients but only {len(available)} are available.\n"
                "Hint: lower Sampling(min_available_clients=...), or run more clients "
                "(--clients N in simulation)."
            )
        busy = {task.message.node_id for task in self._in_flight.values()}
        idle = [n for n in available if n not in busy and self._trained_from.get(n, -1) < version]
        room = self.strategy.training_slots(len(available)) - len(self._in_flight)
        assert self._rng is not None  # seeded by fit
        for node in self.strategy.choose(idle, room, self._rng):
            message = Message(
                kind=MessageKind.FIT,
                task_id=task_id(self.stages.run_id, step.number, Stage.FIT, node),
                run_id=self.stages.run_id,
                round=step.number,
                node_id=node,
                arrays=step.arrays,
                config=step.config,
            )
            self._in_flight[message.task_id] = _InFlight(message, version)
            self._trained_from[node] = version
            self._workers.run(functools.partial(self._dispatch, message))

    def _dispatch(self, message: Message) -> None:
        """One task's dispatch, on its own thread: everything it yields goes to the loop."""
        try:
            for reply in self.grid.dispatch([message], self.app.stage_timeout(1)):
                self._outcomes.put((message.task_id, reply))
        except Exception as exc:  # the loop raises it: a stopped run, a broken grid
            self._outcomes.put((message.task_id, exc))
        else:
            self._outcomes.put((message.task_id, None))

    # --- replies in --------------------------------------------------------------------------

    def _receive(self, step: _Step, task_id: str, outcome: Message | Exception | None) -> None:
        if isinstance(outcome, Exception):
            raise outcome
        task = self._in_flight.get(task_id)
        if task is None:
            return  # the end of a dispatch whose reply came already
        node, rounds = task.message.node_id, step.rounds
        if outcome is None:
            del self._in_flight[task_id]
            self._fail(rounds, node, (FailureKind.TIMEOUT, no_reply(self.app.stage_timeout(1))))
            return
        if outcome.task_id != task_id or not outcome.is_reply or outcome.node_id != node:
            rounds.dropped(outcome.task_id, outcome.node_id)
            return
        del self._in_flight[task_id]
        failure = reply_problem(outcome)
        if failure is not None:
            self._fail(rounds, node, failure)
            return
        with rounds.aggregating():
            problem = _problem(self.app, outcome, task.message.arrays)
        if problem is not None:
            rounds.received(Stage.FIT, node, False)
            rounds.reject(node, problem)
            return
        base = task.message.arrays
        update = FitResult(node, outcome.arrays, outcome.num_examples, outcome.metrics)
        with rounds.aggregating():
            update, notes = self._bounds.bound(update, base)
        for note in notes:
            rounds.bound(node, Stage.FIT, note)
        staleness = step.number - 1 - task.version
        weight = self.strategy.staleness_weight(staleness)
        with rounds.aggregating():
            step.buffer.add(update.arrays, base, update.num_examples, weight)
        step.folded.append((update.num_examples, update.metrics, staleness))
        rounds.received(Stage.FIT, node, True)

    @staticmethod
    def _fail(rounds: RoundRecorder, node: int, problem: Problem) -> None:
        rounds.fail(node, Stage.FIT, *problem)
        rounds.received(Stage.FIT, node, False)


class _Workers:
    """Daemon threads that make the dispatch calls, each reused once its call returns.

    Reused, because starting a thread waits for the new thread to run, and while simulated
    clients keep the GIL busy that costs ~0.6 ms a task (measured: 20 single-task dispatch
    calls took 13 ms on new threads, 3 ms on reused ones). Daemons, because a call the grid
    never ends (a task in flight when the run ended) must not hold the process at exit.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._idle = self._threads = 0
        self._lock = threading.Lock()

    def run(self, job: Callable[[], None]) -> None:
        with self._lock:
            if self._idle:
                self._idle -= 1
            else:
                self._threads += 1
                name = f"{self._name}-{self._threads}"
                threading.Thread(target=self._serve, name=name, daemon=True).start()
        self._jobs.put(job)

    def close(self) -> None:
        """Each thread ends once its call returns."""
        with self._lock:
            for _ in range(self._threads):
                self._jobs.put(None)

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            job()
            with self._lock:
                self._idle += 1


def _problem(app: ServerApp, reply: Message, base: Arrays) -> str | None:
    """Why the update in ``reply`` is rejected, checked against the arrays its node trained
    from.

    The update checks that need one update at a time apply (``Screen.problem``: names,
    shapes, dtypes, finite values, examples, ``max_norm``); the anomaly score needs a round's
    updates side by side and so does not apply to updates that arrive one by one.
    """
    return Screen(app.validation, base, expected=0).problem(reply)
