"""The Grid: the one interface between the run loop and whatever carries messages.

The loop sends instructions and receives replies as they come; it never knows whether they
come from threads (simulation), Ray actors or nodes over gRPC (deployment). Tests plug in
grids that inject faults.

A grid whose clients run on remote workers may also offer summed fit stages
(``sums_updates``, ``dispatch_summed``; ``summing.py``): each worker screens and sums its
share of the updates, and one partial sum per worker comes back. Every grid carries replies;
summing is a capability a grid declares, and the round uses it only where the result cannot
differ.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

from pollinate.aggregate.mean import PartialSum
from pollinate.loop.summing import Answered, Seen, Summing
from pollinate.records import Message


class Deadline(Protocol):
    """A deadline that may move while a dispatch runs (``loop/deadline.py``'s
    ``StageClock``): a grid asks it again after each reply it yields."""

    def remaining(self) -> float:
        """Seconds left from now; <= 0 when the time is up."""
        ...


Timeout = float | Deadline | None
"""Seconds from the dispatch call, a ``Deadline``, or None for no deadline."""


class Grid(ABC):
    """Carries instructions to nodes and their replies back."""

    @abstractmethod
    def nodes(self) -> Sequence[int]:
        """Ids of the nodes that can take work now (a ``range`` for a population too large
        to list: sampling never materialises one)."""

    @abstractmethod
    def dispatch(self, instructions: Sequence[Message], timeout: Timeout) -> Iterator[Message]:
        """Send ``instructions`` (each names its node) and yield replies as they arrive.

        The iterator ends when every instruction has a reply or the ``timeout`` has passed
        (``ends_at`` reads it; a ``Deadline`` is read again after each reply yielded);
        instructions without a reply by then are abandoned and their late replies are
        dropped. A grid may yield replies that do not match any instruction (a confused or
        hostile node); the caller checks them.
        """

    @property
    def sums_updates(self) -> bool:
        """Whether ``dispatch_summed`` works here: most grids carry each update back."""
        return False

    def dispatch_summed(
        self, instructions: Sequence[Message], timeout: Timeout, summing: Summing, seen: Seen
    ) -> Iterator[Answered | PartialSum]:
        """Send fit ``instructions`` (they share one ``Arrays``, the round's global model,
        which every update is screened against), screen and sum their updates where they
        are computed (``summing.WorkerSum``), and yield each task's ``Answered`` facts, each
        only after the ``PartialSum`` its update is in; call ``seen()`` as each task's end is
        seen (the stage's deadline counts it then).

        Ends as ``dispatch`` does: tasks without facts by the ``timeout`` are abandoned, and
        what was summed of the others still comes back.
        """
        raise NotImplementedError(f"{type(self).__name__} carries each update back")

    def wait_for_nodes(self, count: int, timeout: float) -> Sequence[int]:
        """``nodes()`` once at least ``count`` nodes can take work, or after ``timeout``
        seconds (then fewer). A grid whose nodes come and go polls (this default); one
        whose nodes are always there answers at once."""
        deadline = time.monotonic() + timeout
        while True:
            nodes = self.nodes()
            left = deadline - time.monotonic()
            if len(nodes) >= count or left <= 0:
                return nodes
            self.pause(min(0.5, left))

    def pause(self, seconds: float) -> None:
        """Wait between two looks at ``nodes()``; a grid may end the wait early by raising."""
        time.sleep(seconds)

    def close(self) -> None:  # noqa: B027 - optional hook, most grids hold nothing
        """Release workers or connections."""


def ends_at(timeout: Timeout) -> Callable[[], float | None]:
    """When a dispatch called now with ``timeout`` ends, as ``time.monotonic()`` (None:
    never); call the result again after each reply, as a ``Deadline`` may have moved."""
    if timeout is None:
        return lambda: None
    if isinstance(timeout, int | float):
        end = time.monotonic() + timeout
        return lambda: end
    deadline = timeout
    return lambda: time.monotonic() + deadline.remaining()
