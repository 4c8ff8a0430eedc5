"""When a stage of a round stops waiting: the default deadline, derived from the round itself.

A node that heartbeats but never takes its task, or never answers, must cost a round no more
than its own reply. A fixed deadline that suits every run does not exist (a phone trains in
seconds, a hospital's GPU job in an hour), so by default a stage's deadline follows from how
long its own nodes take (``RoundDeadline``):

- once ``quorum`` of the stage's tasks (half, by default) have answered, after ``t`` seconds,
  the stage waits for the rest until ``max(floor, multiple x t)`` seconds from its start
  (60 s, and five times the median node's time, by default);
- until then, it waits as long as replies keep coming: it ends after ``patience`` seconds
  (an hour) without any.

So the median node sets the pace, a minority of silent or slow nodes cannot hold the round,
and a run whose nodes all train for hours is not cut short. ``ServerApp(round_timeout=120)``
sets a fixed deadline instead; ``round_timeout=math.inf`` waits for every reply.

Invariant: the deadline depends only on when replies arrived, never on what they hold.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from pollinate.checks import fraction, positive
from pollinate.loop.grid import Timeout


@dataclass(frozen=True)
class RoundDeadline:
    """The default deadline of each stage of a round (see the module docstring).

    Args:
        quorum: the fraction of the stage's tasks whose replies set the pace.
        multiple: the stage ends ``multiple`` x the quorum's time after its start...
        floor: ...but not before ``floor`` seconds.
        patience: before the quorum, the stage ends after this many seconds without a reply.

    >>> RoundDeadline()
    RoundDeadline(quorum=0.5, multiple=5.0, floor=60.0, patience=3600.0)
    """

    quorum: float = 0.5
    multiple: float = 5.0
    floor: float = 60.0
    patience: float = 3600.0

    def __post_init__(self) -> None:
        hint = "RoundDeadline(quorum=0.5) sets the pace by the median node."
        fraction("RoundDeadline.quorum", self.quorum, hint=hint)
        hint = "RoundDeadline(multiple=5.0, floor=60.0, patience=3600.0)"
        for name in ("multiple", "floor", "patience"):
            positive(f"RoundDeadline.{name}", getattr(self, name), hint=hint)

    def clock(self, tasks: int, now: Callable[[], float] = time.monotonic) -> StageClock:
        """A clock for one stage of ``tasks`` tasks, started now."""
        return StageClock(self, tasks, now)


class StageClock:
    """One stage's deadline under a ``RoundDeadline``: told of each reply (``replied``), it
    says how long the stage may still wait (``remaining``), as a Grid's ``dispatch`` asks."""

    def __init__(self, rule: RoundDeadline, tasks: int, now: Callable[[], float]) -> None:
        self._rule, self._now = rule, now
        self._started = self._last = now()
        self._quorum = max(1, math.ceil(rule.quorum * tasks))
        self._replies = 0
        self._end: float | None = None  # fixed once the quorum answered

    def replied(self) -> None:
        """One more reply arrived, now."""
        self._replies += 1
        self._last = self._now()
        if self._replies == self._quorum:
            took = self._last - self._started
            self._end = self._started + max(self._rule.floor, self._rule.multiple * took)

    def remaining(self) -> float:
        """Seconds the stage may still wait for replies (<= 0: it is over)."""
        end = self._end if self._end is not None else self._last + self._rule.patience
        return end - self._now()


def no_reply(timeout: Timeout) -> str:
    """The reason a task without a reply failed, saying how its deadline was set."""
    if isinstance(timeout, int | float):
        return f"no reply within round_timeout={timeout}s"
    return "no reply by the stage's deadline (derived from the round: see RoundDeadline)"
