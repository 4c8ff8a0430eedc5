"""Group commit: callers in many threads share one commit of what each needs made durable.

A caller hands in its item and waits. If no commit is under way, it commits at once (a lone
caller never waits for company), taking along every item handed in meanwhile; otherwise it
waits for the commit under way, after which one of those waiting commits them all. So while
one commit runs (an fsync: milliseconds), the next gathers every caller that arrives, and N
callers at once cost a few commits, not N.

Invariants:
- every caller gets its own item's result, or the exception of the commit that took its
  item, and returns only once that commit has ended;
- one commit at a time, run in the thread of one of its callers (no thread of its own:
  nothing to start or stop).

>>> square_all = GroupCommit(lambda numbers: [n * n for n in numbers])
>>> square_all(7)
49
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class _Waiter(Generic[T, R]):
    item: T
    done: bool = False
    result: R | None = None
    error: BaseException | None = None

    def outcome(self) -> R:
        if self.error is not None:
            raise self.error
        return self.result  # type: ignore[return-value]  # done: set by the commit


class GroupCommit(Generic[T, R]):
    """Calls ``commit(items)`` (which returns one result per item, in order) for the items
    of every caller waiting, one commit at a time."""

    def __init__(self, commit: Callable[[list[T]], list[R]]) -> None:
        self._commit = commit
        self._changed = threading.Condition()
        self._waiting: list[_Waiter[T, R]] = []
        self._committing = False

    def __call__(self, item: T) -> R:
        """``item``'s result, once a commit that took it has ended."""
        mine: _Waiter[T, R] = _Waiter(item)
        with self._changed:
            self._waiting.append(mine)
            self._changed.wait_for(lambda: mine.done or not self._committing)
            if mine.done:  # another caller committed it
                return mine.outcome()
            batch, self._waiting, self._committing = self._waiting, [], True
        try:
            results = self._commit([waiter.item for waiter in batch])
            for waiter, result in zip(batch, results, strict=True):
                waiter.result = result
        except BaseException as exc:  # every caller of the batch is told, the leader too
            for waiter in batch:
                waiter.error = exc
        with self._changed:
            for waiter in batch:
                waiter.done = True
            self._committing = False
            self._changed.notify_all()
        return mine.outcome()
