"""Summed fit stages: updates screened and summed where they are computed, one sum back.

A grid whose clients run on remote workers (``RayGrid``) can save the round most of its
traffic by folding each worker's updates into one partial weighted sum there, as Pollen
does (Sani et al. 2024): one ``PartialSum`` per worker per round travels back, not one
update per client. The round must come out exactly as if every update had come to the hub,
so a stage is summed only where nothing can tell the difference (``summing_for``):

- the grid offers it (``Grid.sums_updates``);
- the strategy's aggregator is a sum of the updates and says so by taking sums and telling
  the workers how to fold (``MergesSums``: FedAvg, FedAvgM, FedProx, FedOpt by a weighted
  mean, DP-FedAvg by a sum of clipped changes; not the robust strategies, q-FedAvg or
  XGBoost, whose aggregators need each update);
- every screen of an update looks at that update alone (``Validation.relative`` is False):
  names, shapes, dtypes, finite values, examples > 0, ``max_norm`` and the ``max_examples``
  cap, the checks ``Screen.problem`` and ``Screen.admit`` make, run on the worker by
  ``WorkerSum`` with the round's global arrays. Bounds relative to the round's median need
  the updates side by side: such rounds keep the per-reply path.

What comes back per task is small: its reply without arrays (node, examples, metrics, or the
client's error) and, for an update the worker's screen turned down, the reason
(``Answered``). The round records them as it records replies, in the same order, so the
history is the same as the per-reply path's (``tests/simulation/test_ray.py``).

Invariant: a task's facts reach the round only with the sum its update is in, so a round
never counts an update its aggregate lacks (a worker that dies takes both with it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol, runtime_checkable

from pollinate.aggregate.mean import PartialSum
from pollinate.loop.screen import Screen, Validation
from pollinate.records import Arrays, Message
from pollinate.strategy.base import FitAggregator, FitResult

Seen = Callable[[], None]
"""Called by a summing grid as each task's end is seen (the stage's deadline counts it then)."""


class Folding(Protocol):
    """A worker's sum of a stage's accepted updates, as the round's aggregator would fold
    them. ``add`` raises ValueError for an update it cannot take."""

    def add(self, result: FitResult) -> None: ...
    def partial(self) -> PartialSum: ...


class WorkerFold(Protocol):
    """How a worker folds a stage's updates: small, picklable (it travels to the workers)."""

    def start(self, current: Arrays) -> Folding: ...


@dataclass(frozen=True)
class Summing:
    """How a grid screens and sums a summed stage's updates: the round's ``Validation``
    (only its per-update checks apply), the aggregator's ``fold``, and whether updates have
    the model's shapes."""

    validation: Validation
    fold: WorkerFold
    like_model: bool = True


@dataclass(frozen=True)
class Answered:
    """A task of a summed stage that ended: its ``reply`` without arrays (or with the
    client's error), and why the worker's screen turned its update down, if it did."""

    reply: Message
    rejected: str | None = None


@runtime_checkable
class MergesSums(Protocol):
    """An aggregator that is a sum of the updates (and a step on it): a partial sum its
    ``worker_fold`` made, merged in, counts as its updates added one by one."""

    def add(self, result: FitResult) -> None: ...
    def finish(self) -> Arrays: ...
    def merge(self, partial: PartialSum) -> None: ...
    def worker_fold(self) -> WorkerFold: ...


def summing_for(
    grid_sums: bool, validation: Validation, like_model: bool, aggregator: FitAggregator
) -> tuple[Summing, MergesSums] | None:
    """How a stage of a grid that sums (``grid_sums``) is summed, and the aggregator that
    merges its sums; None when the stage must keep the per-reply path."""
    if not grid_sums or validation.relative or not isinstance(aggregator, MergesSums):
        return None
    return Summing(validation, aggregator.worker_fold(), like_model), aggregator


class WorkerSum:
    """A worker's side of a summed stage: screens each reply as the hub would and folds the
    updates it accepts into one partial sum of the round."""

    def __init__(self, current: Arrays, summing: Summing) -> None:
        self._screen = Screen(summing.validation, current, 1, summing.like_model)
        self._sum = summing.fold.start(current)

    def take(self, reply: Message) -> Answered:
        """Screen ``reply`` and fold its update in if it passes; its facts for the round."""
        facts = replace(reply, arrays=Arrays())
        if reply.error is not None:
            return Answered(facts)
        rejected = self._screen.problem(reply)
        if rejected is not None:
            return Answered(facts, rejected)
        result = FitResult(reply.node_id, reply.arrays, reply.num_examples, reply.metrics)
        for counted in self._screen.admit(result):  # capped to max_examples
            try:
                self._sum.add(counted)
            except ValueError as exc:  # an update the sum cannot take (its screen said so)
                return Answered(facts, str(exc))
        return Answered(facts)

    def partial(self) -> PartialSum:
        return self._sum.partial()
