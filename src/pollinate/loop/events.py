"""Events the run loop emits while it runs, for progress bars, logs and dashboards."""

from __future__ import annotations

from dataclasses import dataclass

from pollinate.loop.history import RoundRecord


@dataclass(frozen=True, slots=True)
class StageStarted:
    """A stage (``fit`` or ``evaluate``) of ``round`` sent ``tasks`` instructions."""

    round: int
    stage: str
    tasks: int


@dataclass(frozen=True, slots=True)
class ReplyReceived:
    """One task of a stage ended: ``ok`` is False when the reply was a failure."""

    round: int
    stage: str
    node_id: int
    ok: bool


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
    stage: str
    node_id: int
    note: str


@dataclass(frozen=True, slots=True)
class RoundFinished:
    record: RoundRecord


Event = StageStarted | ReplyReceived | ReplyBounded | UpdateRejected | RoundFinished
