"""Summed fit stages: updates screened and summed where they are computed, one sum back.

A grid whose clients run on remote workers (``RayGrid``) can save the round most of its
traffic by folding each worker's updates into one partial weighted sum there, as Pollen
does (Sani et al. 2024): one ``PartialSum`` per worker per round travels back, not one
update per client. The round must come out exactly as if every update had come to the hub,
so a stage is summed only where nothing can tell the difference (``summing_for``):

- the grid offers it (``Grid.sums_updates``);
- the strategy's aggregator is a weighted mean and says so by taking sums (``MergesSums``:
  FedAvg, FedAvgM, FedProx, FedOpt; not DP-FedAvg, the robust strategies, q-FedAvg or
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

from pollinate.aggregate.mean import PartialSum, WeightedMean
from pollinate.loop.screen import Screen, Validation
from pollinate.records import Arrays, Message
from pollinate.strategy.base import FitResult

Seen = Callable[[], None]
"""Called by a summing grid as each task's end is seen (the stage's deadline counts it then)."""


@dataclass(frozen=True)
class Summing:
    """How a grid screens a summed stage's updates: the round's ``Validation`` (only its
    per-update checks apply) and whether updates have the model's shapes."""

    validation: Validation
    like_model: bool = True


@dataclass(frozen=True)
class Answered:
    """A task of a summed stage that ended: its ``reply`` without arrays (or with the
    client's error), and why the worker's screen turned its update down, if it did."""

    reply: Message
    rejected: str | None = None


@runtime_checkable
class MergesSums(Protocol):
    """An aggregator that is a weighted mean of the updates (and a server update on it):
    a partial sum merged in counts as its updates added one by one."""

    def add(self, result: FitResult) -> None: ...
    def finish(self) -> Arrays: ...
    def merge(self, partial: PartialSum) -> None: ...


def summing_for(grid_sums: bool, validation: Validation, like_model: bool) -> Summing | None:
    """The ``Summing`` a stage of a grid that sums (``grid_sums``) runs with, or None when it
    must keep the per-reply path; the aggregator must also be ``MergesSums``."""
    if not grid_sums or validation.relative:
        return None
    return Summing(validation, like_model)


class WorkerSum:
    """A worker's side of a summed stage: screens each reply as the hub would and folds the
    updates it accepts into one partial sum of the round."""

    def __init__(self, current: Arrays, summing: Summing) -> None:
        self._screen = Screen(summing.validation, current, 1, summing.like_model)
        self._mean = WeightedMean(current)

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
                self._mean.add(counted.arrays, counted.num_examples)
            except ValueError as exc:  # an update the mean cannot take (its screen said so)
                return Answered(facts, str(exc))
        return Answered(facts)

    def partial(self) -> PartialSum:
        return self._mean.partial()
