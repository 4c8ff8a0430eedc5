"""Server side: the run loop, the Grid it talks through, and the history it keeps."""

from pollinate.server.app import ServerApp
from pollinate.server.deadline import RoundDeadline
from pollinate.server.events import (
    Event,
    ReplyBounded,
    ReplyReceived,
    RoundFinished,
    StageStarted,
    UpdateRejected,
)
from pollinate.server.grid import Grid
from pollinate.server.history import Failure, History, RoundRecord
from pollinate.server.loop import RunResult, run
from pollinate.server.screen import Validation

__all__ = [
    "Event",
    "Failure",
    "Grid",
    "History",
    "ReplyBounded",
    "ReplyReceived",
    "RoundDeadline",
    "RoundFinished",
    "RoundRecord",
    "RunResult",
    "ServerApp",
    "StageStarted",
    "UpdateRejected",
    "Validation",
    "run",
]
