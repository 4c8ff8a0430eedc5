"""The Grid: the one interface between the run loop and whatever carries messages.

The loop sends instructions and receives replies as they come; it never knows whether they
come from threads (simulation), Ray actors or nodes over gRPC (deployment). Tests plug in
grids that inject faults.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence

from pollinate.records import Message


class Grid(ABC):
    """Carries instructions to nodes and their replies back."""

    @abstractmethod
    def nodes(self) -> list[int]:
        """Ids of the nodes that can take work now."""

    @abstractmethod
    def dispatch(self, instructions: Sequence[Message], timeout: float | None) -> Iterator[Message]:
        """Send ``instructions`` (each names its node) and yield replies as they arrive.

        The iterator ends when every instruction has a reply or ``timeout`` seconds have
        passed; instructions without a reply by then are abandoned and their late replies are
        dropped. A grid may yield replies that do not match any instruction (a confused or
        hostile node); the caller checks them.
        """

    def close(self) -> None:  # noqa: B027 - optional hook, most grids hold nothing
        """Release workers or connections."""
