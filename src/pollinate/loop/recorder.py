"""What happened in a round, written once: the record, the event and the log line together.

Every fit protocol (``plain.py``, ``secure.py``, ``buffered.py``) and the evaluation stage
report through a ``RoundRecorder``; nothing else writes a ``RoundRecord`` or emits an
event. A subscriber (the CLI's progress, the hub's run log, a dashboard, metrics) therefore
sees every round the same way whichever protocol ran it.

Invariants:
- each failure is one ``Failure`` in the record, with its kind, and one log line; it is
  also a ``TaskFailed`` event, or an ``UpdateRejected`` event for a rejection, which counts
  in ``rejected``;
- a round that keeps the previous model says why, in the log and in ``applied``/``aborted``;
- ``on_checkpoint`` sees a finished round before ``RoundFinished`` announces it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from pollinate.loop.checkpoint import Checkpoint
from pollinate.loop.events import (
    Event,
    ReplyBounded,
    ReplyReceived,
    RoundFinished,
    Stage,
    StageStarted,
    TaskFailed,
    UpdateRejected,
)
from pollinate.loop.history import Failure, FailureKind, History, RoundRecord
from pollinate.records import Arrays

log = logging.getLogger("pollinate.loop")

EventHandler = Callable[[Event], None]
CheckpointHandler = Callable[[Checkpoint], None]


@dataclass
class Recorder:
    """A run's bookkeeping: opens a ``RoundRecorder`` per round, closes it into the history."""

    run_id: str
    emit: EventHandler
    checkpoint: CheckpointHandler
    history: History = field(default_factory=History)

    def __post_init__(self) -> None:
        # every record carries the run id, so a hub can route it to that run's log
        self.log = logging.LoggerAdapter(log, {"run_id": self.run_id})

    def round(self, number: int) -> RoundRecorder:
        return RoundRecorder(self, RoundRecord(round=number), time.perf_counter())

    def finish(self, rounds: RoundRecorder, arrays: Arrays, strategy_state: Arrays) -> None:
        """Close the round: time it, add it to the history, checkpoint, announce."""
        record = rounds.record
        record.seconds = time.perf_counter() - rounds.started
        self.history.rounds.append(record)
        snapshot = History(list(self.history.rounds))
        self.checkpoint(Checkpoint(record.round, arrays, strategy_state, snapshot))
        self.emit(RoundFinished(record))

    def stopped(self, after: int, reason: str) -> None:
        self.log.warning("run %s stops after round %d: %s", self.run_id, after, reason)


@dataclass
class RoundRecorder:
    """One round's record, and the events and log lines that go with each entry."""

    run: Recorder
    record: RoundRecord
    started: float

    @property
    def number(self) -> int:
        return self.record.round

    def stage_started(self, stage: Stage, tasks: int) -> None:
        self.run.emit(StageStarted(self.number, stage, tasks))

    def received(self, stage: Stage, node: int, ok: bool) -> None:
        """A task of ``stage`` ended with a reply (``ok``) or a failure."""
        self.run.emit(ReplyReceived(self.number, stage, node, ok))

    def fail(self, node: int, stage: Stage, kind: FailureKind, reason: str) -> None:
        """A task that produced nothing usable: it timed out, the client raised, the node
        was lost, or the reply was malformed."""
        self.record.failed.append(Failure(node, stage, reason, kind))
        self.run.emit(TaskFailed(self.number, stage, node, kind))
        self._warn("%s from node %d failed: %s", stage, node, reason)

    def reject(self, node: int, reason: str) -> None:
        """An update that arrived and did not pass validation (``screen.py``), or that the
        strategy could not use."""
        self.record.failed.append(Failure(node, Stage.FIT, reason, FailureKind.REJECTED))
        self.record.rejected += 1
        self.run.emit(UpdateRejected(self.number, node, reason))
        self._warn("update from node %d rejected: %s", node, reason)

    def bound(self, node: int, stage: Stage, note: str) -> None:
        """A reply that counts, bounded to its fair share (``bounds.py``)."""
        self.run.emit(ReplyBounded(self.number, stage, node, note))
        self._warn("%s reply of node %d bounded: %s", stage, node, note)

    @contextmanager
    def aggregating(self) -> Iterator[None]:
        """Count the time inside towards the round's ``aggregation_seconds``."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.record.aggregation_seconds += time.perf_counter() - started

    def keep_model(self, why: str) -> None:
        """The round's aggregate is not applied: the global model stays as it was."""
        self.record.applied = False
        self._warn("%s; keeping the previous global model", why)

    def abort(self, why: str) -> None:
        """The round's protocol gave up (secure aggregation saw tampering, say)."""
        self.record.applied, self.record.aborted = False, why
        self.run.log.error(
            "run %s round %d: aborted, keeping the previous global model: %s",
            self.run.run_id,
            self.number,
            why,
        )

    def count_fit(self, replies: int) -> None:
        """The fit is over: ``replies`` updates went into the aggregate; every failure so far
        was a fit failure."""
        self.record.replies, self.record.failures = replies, len(self.record.failed)

    def tolerated(self, tolerance: float, tasks: int) -> bool:
        """At most ``tolerance`` of the round's ``tasks`` fit tasks failed; otherwise the
        round keeps the previous model, saying so."""
        if self.record.failures <= tolerance * tasks:
            return True
        self.keep_model(
            f"{self.record.failures} of {tasks} fit tasks failed or were rejected, more than "
            f"failure_tolerance={tolerance} allows"
        )
        return False

    def waiting(self, connected: int, needed: int, stage: str, seconds: float) -> None:
        self._warn(
            "%d of the %d clients %s needs are connected; waiting up to %gs for more "
            "(ServerApp.node_wait)",
            connected,
            needed,
            stage,
            seconds,
        )

    def dropped(self, task_id: str, node: int) -> None:
        """A reply for a task that is unknown or already ended: it counts for nothing."""
        self._warn("dropped a reply for unknown or finished task %r from node %d", task_id, node)

    def summary(self, line: str) -> None:
        self.run.log.info("run %s round %d: %s", self.run.run_id, self.number, line)

    def _warn(self, message: str, *args: object) -> None:
        self.run.log.warning("run %s round %d: " + message, self.run.run_id, self.number, *args)
