"""Update validation: every fit update is screened before it reaches the strategy.

On by default, configured per run with ``ServerApp(validation=Validation(...))``. Three
layers, each a rejection with a reason (an event, a line in the run's log, a count in the
history), never a crash:

1. the update must fit the global model: names, shapes, dtypes, finite values, examples > 0;
2. its change ``update - global`` must have an L2 norm within ``max_norm`` (if set);
3. its anomaly score must stay within ``anomaly_threshold``: the score is the distance of the
   update to the round's coordinate-wise median update, divided by the median of those
   distances. Honest updates scatter around the median; a flipped, boosted or noisy one lies
   far out. This layer needs the round's updates side by side, so with it on the round keeps
   one copy of each update until it closes (a deployment's are the hub's journal files).

Invariant: the strategy sees only updates that passed every layer that is on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pollinate.aggregate.robust import median_distances
from pollinate.records import Arrays, Message
from pollinate.server.validate import arrays_problem, finite_problem
from pollinate.strategy.base import FitResult


@dataclass(frozen=True)
class Validation:
    """How the hub screens fit updates; the defaults suit most runs.

    Args:
        max_norm: largest L2 norm of an update's change to the global model (all float
            arrays together); None sets no bound. Set it when you know your updates' scale
            (e.g. with clipping): it stops boosted updates even in tiny rounds.
        anomaly_threshold: quarantine an update whose distance to the round's coordinate-wise
            median update is more than this many times the median distance; None turns the
            anomaly score off (and lets rounds stream: O(model) memory).
        min_updates: the anomaly score needs a crowd: rounds with fewer valid updates skip it.

    >>> Validation(anomaly_threshold=None)
    Validation(max_norm=None, anomaly_threshold=None, min_updates=5)
    """

    max_norm: float | None = None
    anomaly_threshold: float | None = 3.0
    min_updates: int = 5

    def __post_init__(self) -> None:
        for name in ("max_norm", "anomaly_threshold"):
            value = getattr(self, name)
            if value is not None and not (_is_number(value) and value > 0):
                raise ValueError(
                    f"Validation.{name} must be a number > 0 or None, got {value!r}\n"
                    f"Hint: Validation({name}=None) turns the check off."
                )
        if isinstance(self.min_updates, bool) or not isinstance(self.min_updates, int):
            raise TypeError(f"Validation.min_updates must be an int, got {self.min_updates!r}")
        if self.min_updates < 3:
            raise ValueError(
                f"Validation.min_updates must be >= 3 (a median of fewer says nothing), "
                f"got {self.min_updates!r}"
            )


class Screen:
    """Screens one round's fit updates against ``current``, the round's global arrays.

    ``admit`` takes each update as it arrives and returns the updates ready for the strategy
    now (all of them when the anomaly score is off or cannot apply); ``close`` returns the
    held ones that pass, and the quarantined ones with their reasons.
    """

    def __init__(
        self, validation: Validation, current: Arrays, expected: int, like_model: bool = True
    ) -> None:
        self.validation = validation
        self.current = current
        # updates shaped otherwise (Strategy.updates_like_model) are not compared to the model
        self.like_model = like_model
        self._holding = (
            like_model
            and validation.anomaly_threshold is not None
            and expected >= validation.min_updates
        )
        self._held: list[FitResult] = []

    def problem(self, reply: Message) -> str | None:
        """Why the update in ``reply`` is rejected at once (layers 1 and 2), or None."""
        if reply.num_examples <= 0:
            return "reported num_examples=0, so its update has no weight"
        if not self.like_model:
            return finite_problem(reply.arrays)
        problem = arrays_problem(reply.arrays, self.current)
        if problem is not None or self.validation.max_norm is None:
            return problem
        norm = change_norm(reply.arrays, self.current)
        if norm > self.validation.max_norm:
            return (
                f"update norm {norm:.4g} exceeds max_norm={self.validation.max_norm:g}: the "
                "node's training diverged or the update was boosted"
            )
        return None

    def admit(self, result: FitResult) -> list[FitResult]:
        if not self._holding:
            return [result]
        self._held.append(result)
        return []

    def close(self) -> tuple[list[FitResult], list[tuple[int, str]]]:
        """(passing updates, [(node, reason)] quarantined) among those held."""
        held, self._held = self._held, []
        threshold = self.validation.anomaly_threshold
        if threshold is None or len(held) < self.validation.min_updates:
            return held, []
        scores = anomaly_scores([r.arrays for r in held])
        passed = [r for r, s in zip(held, scores, strict=True) if s <= threshold]
        quarantined = [
            (
                r.node_id,
                f"quarantined: anomaly score {s:.2f} > {threshold:g} (its distance to the "
                "round's coordinate-wise median update, in median distances)",
            )
            for r, s in zip(held, scores, strict=True)
            if s > threshold
        ]
        return passed, quarantined


def change_norm(arrays: Arrays, current: Arrays) -> float:
    """L2 norm of ``arrays - current`` over all float arrays."""
    total = 0.0
    for name, ref in current.items():
        if ref.dtype.kind == "f":
            delta = arrays[name].astype(np.float64) - ref
            total += float(np.dot(delta.reshape(-1), delta.reshape(-1)))
    return math.sqrt(total)


def anomaly_scores(updates: list[Arrays]) -> list[float]:
    """Each update's distance to the coordinate-wise median update, over the median of those
    distances (float arrays only).

    >>> import numpy as np
    >>> ups = [Arrays({"w": np.array(v)}) for v in ([1., 1.], [1., 2.], [2., 1.], [9., 9.])]
    >>> [round(s, 2) for s in anomaly_scores(ups)]
    [1.0, 1.0, 1.0, 15.0]
    """
    distances = median_distances(updates)
    scale = float(np.median(distances))
    if scale == 0.0:  # most updates are the median itself: any other is out
        return [0.0 if d == 0.0 else math.inf for d in distances]
    return [float(d / scale) for d in distances]


def _is_number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
