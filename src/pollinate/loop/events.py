"""Events the run loop emits while it runs, for progress bars, logs and dashboards."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from pollinate.loop.history import FailureKind, RoundRecord


class Stage(StrEnum):
    """A step of a round that sends tasks to nodes. A ``str``, so it reads and is stored as its
    value; secure aggregation's fit runs as four stages of its own."""

    FIT = "fit"
    EVALUATE = "evaluate"
    SECAGG_ADVERTISE = "secagg-advertise"
    SECAGG_SHARE = "secagg-share"
    SECAGG_MASK = "secagg-mask"
    SECAGG_UNMASK = "secagg-unmask"


@dataclass(frozen=True, slots=True)
class StageStarted:
    """A stage (``fit`` or ``evaluate``) of ``round`` sent ``tasks`` instructions."""

    round: int
    stage: Stage
    tasks: int


@dataclass(frozen=True, slots=True)
class ReplyReceived:
    """One task of a stage ended: ``ok`` is False when the reply was a failure."""

    round: int
    stage: Stage
    node_id: int
    ok: bool


@dataclass(frozen=True, slots=True)
class TaskFailed:
    """A task of ``stage`` produced nothing usable, for a reason of ``kind`` (a rejected
    update is an ``UpdateRejected`` instead)."""

    round: int
    stage: Stage
    node_id: int
    kind: FailureKind


@dataclass(frozen=True, slots=True)
class UpdateRejected:
    """A node's fit update of ``round`` arrived and failed validation, for ``reason``."""

    round: int
    node_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class ReplyBounded:
    """A node's reply of ``round`` counts, bounded to its fair share (``loop/bounds.py``):
    ``note`` says what was clipped (its example count, its update's norm or distance)."""

    round: int
    stage: Stage
    node_id: int
    note: str


@dataclass(frozen=True, slots=True)
class RoundFinished:
    record: RoundRecord


Event = StageStarted | ReplyReceived | TaskFailed | ReplyBounded | UpdateRejected | RoundFinished
