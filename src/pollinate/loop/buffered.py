"""The asynchronous run loop: nodes train continuously; the model steps every K updates.

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
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from pollinate.aggregate.staleness import BufferedStep
from pollinate.errors import RunError
from pollinate.loop.app import ServerApp
from pollinate.loop.checkpoint import Checkpoint
from pollinate.loop.deadline import no_reply
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
from pollinate.loop.screen import RecentBounds, Screen
from pollinate.records import Arrays, Config, Message, Metrics, Scalar
from pollinate.strategy.base import FitResult
from pollinate.strategy.fedbuff import FedBuff

log = logging.getLogger("pollinate.loop")

_Outcome = tuple[str, Message | Exception | None]
"""``(task id, what its dispatch yielded)``: a reply, the grid's exception, or None when the
dispatch ended."""


@dataclass(frozen=True, slots=True)
class _Task:
    message: Message  # its arrays are the version it trains from
    version: int


@dataclass
class _Step:
    """What a step gathers until it closes."""

    number: int
    arrays: Arrays  # the model it moves: version number - 1
    buffer: BufferedStep
    config: Config
    record: RoundRecord
    folded: list[tuple[int, Metrics, int]] = field(default_factory=list)
    """(examples, metrics, staleness) of each update in the buffer."""


class BufferedLoop:
    """Runs the steps of an asynchronous run; ``server.loop.run`` hands FedBuff runs to it
    after round 0 (or after loading the checkpoint it resumes from)."""

    def __init__(
        self,
        grid: Grid,
        app: ServerApp,
        strategy: FedBuff,
        seed: int,
        run_id: str,
        emit: Callable[[Event], None],
    ) -> None:
        self.grid, self.app, self.strategy = grid, app, strategy
        self.seed, self.run_id, self.emit = seed, run_id, emit
        self.log = logging.LoggerAdapter(log, {"run_id": run_id})
        self._outcomes: queue.Queue[_Outcome] = queue.Queue()
        self._in_flight: dict[str, _Task] = {}
        self._trained_from: dict[int, int] = {}  # node -> the version of its last task
        self._rng = np.random.default_rng(seed)
        self._workers = _Workers(f"pollinate-{run_id}")
        # the relative bounds against the last four steps' worth of updates
        self._bounds = RecentBounds(app.validation, 4 * strategy.buffer_size)

    def run(
        self,
        arrays: Arrays,
        history: History,
        first: int,
        checkpoint: Callable[[Checkpoint], None],
        resumed: bool,
    ) -> Arrays:
        """Steps ``first .. num_rounds`` from ``arrays`` (the model after step ``first - 1``),
        appended to ``history``; returns the final arrays."""
        # seeded by the first step, so a resumed run chooses as a fresh one from there would
        self._rng = np.random.default_rng([self.seed, first, 3])
        try:
            for number in range(first, self.app.num_rounds + 1):
                arrays, record = self._step(number, arrays)
                record.resumed = resumed and number == first
                history.rounds.append(record)
                state = self.strategy.state()
                checkpoint(Checkpoint(number, arrays, state, History(list(history.rounds))))
                self.emit(RoundFinished(record))
        finally:
            self._workers.close()
        return arrays

    # --- one step --------------------------------------------------------------------------

    def _step(self, number: int, arrays: Arrays) -> tuple[Arrays, RoundRecord]:
        started = time.perf_counter()
        step = _Step(
            number,
            arrays,
            self.strategy.start_step(arrays),
            self.strategy.configure_fit(number),
            RoundRecord(round=number),
        )
        self.emit(StageStarted(number, "fit", self.strategy.buffer_size))
        self._send(step)
        while len(step.folded) < self.strategy.buffer_size and self._in_flight:
            self._receive(step, *self._outcomes.get())
            self._send(step)
        arrays = self._apply(step)
        record = step.record
        record.centralized = self._centralized(number, arrays)
        record.seconds = time.perf_counter() - started
        self.log.info(
            "run %s step %d: %d updates, mean staleness %.2f, %d failures",
            self.run_id,
            number,
            record.replies,
            record.fit.get("staleness", 0.0),
            record.failures,
        )
        return arrays, record

    def _apply(self, step: _Step) -> Arrays:
        record, folded = step.record, step.folded
        record.replies, record.failures = len(folded), len(record.failed)
        record.fit = dict(self.strategy.aggregate_fit_metrics([(n, m) for n, m, _ in folded]))
        if folded:
            record.fit["staleness"] = sum(tau for _, _, tau in folded) / len(folded)
        ended = record.replies + record.failures
        if folded and record.failures <= self.strategy.failure_tolerance * ended:
            return step.buffer.finish()
        record.applied = False
        self.log.warning(
            "run %s step %d: %d of %d tasks failed, more than failure_tolerance=%s allows; "
            "keeping the previous global model",
            self.run_id,
            step.number,
            record.failures,
            ended,
            self.strategy.failure_tolerance,
        )
        return step.arrays

    def _centralized(self, number: int, arrays: Arrays) -> dict[str, Scalar]:
        result = self.strategy.evaluate(number, arrays)
        if result is None:
            return {}
        loss, metrics = result
        return {"loss": float(loss), **metrics}

    # --- tasks out ---------------------------------------------------------------------------

    def _send(self, step: _Step) -> None:
        """Give tasks to free nodes that have not trained from this version yet, up to
        ``concurrency`` in flight."""
        version = step.number - 1
        available = self.grid.nodes()
        needed = self.strategy.min_available_clients
        if not self._in_flight and len(available) < needed:
            self.log.warning(
                "run %s step %d: %d of the %d clients FedBuff needs are connected; waiting up "
                "to %gs for more (ServerApp.node_wait)",
                self.run_id,
                step.number,
                len(available),
                needed,
                self.app.node_wait,
            )
            available = self.grid.wait_for_nodes(needed, self.app.node_wait)
        if not self._in_flight and len(available) < needed:
            raise RunError(
                f"FedBuff needs {self.strategy.min_available_clients} clients but only "
                f"{len(available)} are available.\nHint: lower min_available_clients, or run "
                "more clients (--clients N in simulation)."
            )
        busy = {task.message.node_id for task in self._in_flight.values()}
        idle = [n for n in available if n not in busy and self._trained_from.get(n, -1) < version]
        room = self.strategy.training_slots(len(available)) - len(self._in_flight)
        for node in self.strategy.choose(idle, room, self._rng):
            task_id = f"{self.run_id}:{step.number}:fit:{node}"
            message = Message(
                kind="fit",
                task_id=task_id,
                run_id=self.run_id,
                round=step.number,
                node_id=node,
                arrays=step.arrays,
                config=step.config,
            )
            self._in_flight[task_id] = _Task(message, version)
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
        node = task.message.node_id
        if outcome is None:
            del self._in_flight[task_id]
            self._fail(step, node, no_reply(self.app.stage_timeout(1)))
            return
        if outcome.task_id != task_id or not outcome.is_reply or outcome.node_id != node:
            self.log.warning(
                "run %s step %d: dropped a reply for unknown or finished task %r from node %d",
                self.run_id,
                step.number,
                outcome.task_id,
                outcome.node_id,
            )
            return
        del self._in_flight[task_id]
        if outcome.error is not None:
            self._fail(step, node, f"client failed: {outcome.error}")
            return
        problem = _problem(self.app, outcome, task.message.arrays)
        if problem is not None:
            self._reject(step, node, problem)
            return
        base = task.message.arrays
        update = FitResult(node, outcome.arrays, outcome.num_examples, outcome.metrics)
        update, notes = self._bounds.bound(update, base)
        for note in notes:
            self.emit(ReplyBounded(step.number, "fit", node, note))
            self.log.warning(
                "run %s step %d: update of node %d bounded: %s",
                self.run_id,
                step.number,
                node,
                note,
            )
        staleness = step.number - 1 - task.version
        weight = self.strategy.staleness_weight(staleness)
        step.buffer.add(update.arrays, base, update.num_examples, weight)
        step.folded.append((update.num_examples, update.metrics, staleness))
        self.emit(ReplyReceived(step.number, "fit", node, True))

    def _fail(self, step: _Step, node: int, reason: str) -> None:
        step.record.failed.append(Failure(node, "fit", reason))
        self.emit(ReplyReceived(step.number, "fit", node, False))
        self.log.warning(
            "run %s step %d: fit from node %d failed: %s", self.run_id, step.number, node, reason
        )

    def _reject(self, step: _Step, node: int, reason: str) -> None:
        """An update that arrived and did not pass validation (``screen.py``)."""
        step.record.failed.append(Failure(node, "fit", reason))
        step.record.rejected += 1
        self.emit(ReplyReceived(step.number, "fit", node, False))
        self.emit(UpdateRejected(step.number, node, reason))
        self.log.warning(
            "run %s step %d: update from node %d rejected: %s",
            self.run_id,
            step.number,
            node,
            reason,
        )


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
