"""The Grid: the one interface between the run loop and whatever carries messages.

The loop sends instructions and receives replies as they come; it never knows whether they
come from threads (simulation), Ray actors or nodes over gRPC (deployment). Tests plug in
grids that inject faults.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

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
