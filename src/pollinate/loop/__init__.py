"""Server side: the run loop, the Grid it talks through, and the history it keeps."""

from pollinate.loop.app import ServerApp
from pollinate.loop.deadline import RoundDeadline
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
from pollinate.loop.grid import Grid
from pollinate.loop.history import Failure, FailureKind, History, RoundRecord
from pollinate.loop.run import RunResult, run
from pollinate.loop.screen import Validation

__all__ = [
    "Event",
    "Failure",
    "FailureKind",
    "Grid",
    "History",
    "ReplyBounded",
    "ReplyReceived",
    "RoundDeadline",
    "RoundFinished",
    "RoundRecord",
    "RunResult",
    "ServerApp",
    "Stage",
    "StageStarted",
    "TaskFailed",
    "UpdateRejected",
    "Validation",
    "run",
]
