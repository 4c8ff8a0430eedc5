"""Update validation: every fit update is screened before it reaches the strategy.

On by default, configured per run with ``ServerApp(validation=Validation(...))``. Two layers
reject an update, with a reason (an event, a line in the run's log, a count in the history),
never a crash:

1. the update must fit the global model: names, shapes, dtypes, finite values, examples > 0;
2. its change ``update - global`` must have an L2 norm within ``max_norm`` (if set).

The rest bound each node's influence on the round (``bounds.py``). They clip rather than
exclude, so an honest outlier's data still gets in (left out, a client with skewed data is
never learned from and drifts further out, round after round), and a hostile node pulls no
harder than a typical honest one:

3. its example count is at most ``max_examples`` and ``examples_multiple`` x the round's
   median claim (a node cannot claim the round's weight for itself);
4. its anomaly score (its distance to the round's coordinate-wise median update, in median
   distances) above ``pull_threshold``: it is pulled in to the median distance, in its own
   direction; above ``quarantine_threshold`` (nothing honest lies that far: a boosted or
   noisy update) it is left out of this round, a rejection;
5. its change's norm is at most ``norm_multiple`` x the round's median change norm (what a
   boosted update keeps, in rounds too small for the anomaly score).

Robust strategies (``Strategy.bounds_outliers = False``: FedMedian, FedTrimmedAvg, Krum,
Bulyan) get outliers as sent or not at all, since pulling one in hides it from their
statistic: for them layer 4 leaves out every update beyond ``anomaly_threshold`` (for this
round only) and layer 5 is off.

Why averaging strategies pull in below the threshold at which robust ones leave out: the
two remedies cost an honest outlier differently. Leaving it out loses its data for the
round, so it needs the high bar (3 median distances); pulling it in keeps its data at a
typical update's pull, so a lower bar costs an honest client little, and it bounds an
attacker that stays just under the exclusion bar (label flipping scores 2 to 4.5 here),
which would otherwise keep up to 3 typical pulls. Measured (docs/robustness.md): honest
updates scored up to 1.6 on the demo and 2.1 in the non-IID pytorch run, except one
strongly skewed client (2.6 to 7), which is pulled in either way; ``pull_threshold=2.3``
sits above that honest spread.

Layers 3 to 5 need the round's claims and updates side by side, so with them on the round
keeps one copy of each update until it closes (a deployment's are the hub's journal files);
with all three off, rounds stream (O(model) memory).

Invariants: the strategy sees only updates that passed layers 1 and 2; after layers 3 to 5
no update weighs more than ``examples_multiple`` median claims, nor (for a mean) changes
the model by more than ``norm_multiple`` median change norms; a node is left out of no round
but the one its update was in.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, replace

import numpy as np

from pollinate.aggregate.robust import coordinate_median, median_distances
from pollinate.checks import integer, positive
from pollinate.loop.bounds import (
    bound_examples,
    norm_bound,
    pull_toward,
    scale_change,
)
from pollinate.loop.validate import (
    arrays_problem,
    evaluate_reply_problem,
    finite_problem,
    shape_problem,
)
from pollinate.records import Arrays, Message
from pollinate.scratch import BLOCK, scratch
from pollinate.strategy.base import FitResult


@dataclass(frozen=True)
class Validation:
    """How the hub screens and bounds fit updates; the defaults suit most runs.

    Args:
        max_norm: largest L2 norm of an update's change to the global model (all float
            arrays together); None sets no bound. An update beyond it is rejected. Set it
            when you know your updates' scale (e.g. with clipping).
        anomaly_threshold: for robust strategies (``Strategy.bounds_outliers = False``), an
            update farther from the round's coordinate-wise median update than this many
            times the median distance (its anomaly score) is left out of the round; None
            turns the score off for every strategy.
        min_updates: the anomaly threshold needs a crowd: rounds with fewer updates skip it.
        norm_multiple: an update's change is scaled down to at most this many times the
            round's median change norm; None turns it off.
        examples_multiple: a node's example count (its weight in the mean, and in federated
            evaluation) counts at most this many times the round's median claim; None turns
            it off.
        max_examples: the most examples any one reply may count for in this run; None: no
            cap.
        quarantine_threshold: an update farther out than this many median distances is
            left out of the round (nothing honest lies that far: it is boosted or noise);
            None lets every outlier in, pulled in. Robust strategies
            (``Strategy.bounds_outliers = False``) leave out every update beyond
            ``anomaly_threshold`` instead, and get the norms as sent.
        pull_threshold: for averaging strategies, an update whose anomaly score exceeds this
            is pulled in to the median distance, in its own direction: its data still
            counts, as much as a typical update's. Lower than ``anomaly_threshold``, since
            pulling in costs an honest outlier far less than leaving it out (see the module
            docstring); None lets outliers in as sent, up to ``quarantine_threshold``.

    With ``anomaly_threshold``, ``norm_multiple`` and ``examples_multiple`` all None, rounds
    stream (O(model) memory); otherwise a round keeps one copy of each update until it closes.

    >>> Validation(anomaly_threshold=None)  # doctest: +NORMALIZE_WHITESPACE
    Validation(max_norm=None, anomaly_threshold=None, min_updates=5, norm_multiple=3.0,
               examples_multiple=5.0, max_examples=None, quarantine_threshold=10.0,
               pull_threshold=2.3)
    """

    max_norm: float | None = None
    anomaly_threshold: float | None = 3.0
    min_updates: int = 5
    norm_multiple: float | None = 3.0
    examples_multiple: float | None = 5.0
    max_examples: int | None = None
    quarantine_threshold: float | None = 10.0
    pull_threshold: float | None = 2.3

    def __post_init__(self) -> None:
        for name in (
            "max_norm",
            "anomaly_threshold",
            "norm_multiple",
            "examples_multiple",
            "quarantine_threshold",
            "pull_threshold",
        ):
            value = getattr(self, name)
            if value is not None:
                positive(
                    f"Validation.{name}",
                    value,
                    hint=f"Validation({name}=None) turns the check off.",
                )
        for name in ("norm_multiple", "examples_multiple"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(
                    f"Validation.{name} must be >= 1 (a multiple of the median), got "
                    f"{value!r}\nHint: Validation({name}=3.0)"
                )
        near, far = self.anomaly_threshold, self.quarantine_threshold
        if near is not None and far is not None and far < near:
            raise ValueError(
                f"Validation.quarantine_threshold must be >= anomaly_threshold={near!r}, got "
                f"{far!r}\nHint: Validation(anomaly_threshold=3.0, quarantine_threshold=10.0)"
            )
        self._check_pull_threshold()
        if self.max_examples is not None:
            integer(
                "Validation.max_examples",
                self.max_examples,
                minimum=1,
                hint="Validation(max_examples=100_000), or None for no cap",
            )
        integer(
            "Validation.min_updates",
            self.min_updates,
            minimum=3,
            hint="Validation(min_updates=5): a median of fewer than 3 updates says nothing",
        )

    def _check_pull_threshold(self) -> None:
        pull, far = self.pull_threshold, self.quarantine_threshold
        if pull is None:
            return
        if pull < 1:
            raise ValueError(
                f"Validation.pull_threshold must be >= 1 (a multiple of the median distance, "
                f"to which an outlier is pulled in), got {pull!r}\n"
                "Hint: Validation(pull_threshold=2.3)"
            )
        if far is not None and far < pull:
            raise ValueError(
                f"Validation.quarantine_threshold must be >= pull_threshold={pull!r}, got "
                f"{far!r}\nHint: Validation(pull_threshold=2.3, quarantine_threshold=10.0)"
            )

    @property
    def relative(self) -> bool:
        """Whether a bound relative to the round's other replies is on (rounds then hold
        their updates until they close)."""
        return any(
            value is not None
            for value in (self.anomaly_threshold, self.norm_multiple, self.examples_multiple)
        )


Note = tuple[int, str]
"""``(node, what was bounded and why)``."""


class Screen:
    """Screens one round's fit updates against ``current``, the round's global arrays.

    ``problem`` says why a reply is rejected at once (layers 1 and 2); ``admit`` takes each
    update that passed and returns the updates ready for the strategy now (all of them when
    no relative bound is on, or the round has a single task); ``close`` returns the held ones,
    bounded (layers 3 to 5), with a note for each bound that moved one.
    """

    def __init__(
        self,
        validation: Validation,
        current: Arrays,
        expected: int,
        like_model: bool = True,
        bound_outliers: bool = True,
    ) -> None:
        self.validation = validation
        self.current = current
        # updates shaped otherwise (Strategy.updates_like_model) are not compared to the model
        self.like_model = like_model
        # Strategy.bounds_outliers: False leaves outliers out and norms as sent (robust ones)
        self.bound_outliers = bound_outliers
        self._holding = expected >= 2 and validation.relative
        self._bounds_norms = like_model and bound_outliers and validation.norm_multiple is not None
        self._held: list[FitResult] = []
        self._notes: list[Note] = []
        # each held update's change norm, taken as it arrives (while others are on their way)
        # rather than all at close: by id of its arrays, kept with them
        self._norms: dict[int, tuple[Arrays, float]] = {}

    @property
    def holding(self) -> bool:
        """Whether ``admit`` holds updates until ``close`` (a relative bound is on and the
        round has more than one task)."""
        return self._holding

    @property
    def newest(self) -> FitResult:
        """The update ``admit`` held last, as held (its claim capped to ``max_examples``)."""
        return self._held[-1]

    def problem(self, reply: Message) -> str | None:
        """Why the update in ``reply`` is rejected at once (layers 1 and 2), or None."""
        if reply.num_examples <= 0:
            return "reported num_examples=0, so its update has no weight"
        if not self.like_model:
            return finite_problem(reply.arrays)
        keep_norm = self._holding and self._bounds_norms
        if not keep_norm and self.validation.max_norm is None:
            return arrays_problem(reply.arrays, self.current)
        problem = shape_problem(reply.arrays, self.current)
        if problem is not None:
            return problem
        # one pass for both: a finite change norm means finite float values (it leaves
        # complex arrays out, which are then checked on their own)
        norm = change_norm(reply.arrays, self.current)
        unchecked = reply.arrays if not math.isfinite(norm) else self._outside_norm(reply)
        if (problem := finite_problem(unchecked)) is not None:
            return problem
        if self.validation.max_norm is not None and norm > self.validation.max_norm:
            return (
                f"update norm {norm:.4g} exceeds max_norm={self.validation.max_norm:g}: the "
                "node's training diverged or the update was boosted"
            )
        if keep_norm:  # admit holds it next: its norm is kept with its arrays till close
            self._norms[id(reply.arrays)] = (reply.arrays, norm)
        return None

    def _outside_norm(self, reply: Message) -> Arrays:
        """The arrays of ``reply`` that ``change_norm`` leaves out (all but float ones)."""
        return Arrays({n: a for n, a in reply.arrays.items() if self.current[n].dtype.kind != "f"})

    def admit(self, result: FitResult) -> list[FitResult]:
        cap = self.validation.max_examples
        if cap is not None and result.num_examples > cap:
            self._notes.append(
                (
                    result.node_id,
                    f"claimed {result.num_examples} examples, counted {cap} (max_examples)",
                )
            )
            result = replace(result, num_examples=cap)
        if not self._holding:
            return [result]
        if self._bounds_norms:  # taken by problem, or now
            self._norms[id(result.arrays)] = (result.arrays, self._norm(result.arrays))
        self._held.append(result)
        return []

    def close(self) -> tuple[list[FitResult], list[Note], list[Note]]:
        """(the held updates, bounded; a note for each bound that moved one; the far
        outliers left out of the round, with the reason)."""
        held, self._held = self._held, []
        notes, self._notes = self._notes, []
        if not held:
            return held, notes, []
        left_out: list[Note] = []
        try:
            held = self._bound_examples(held, notes)
            if self.like_model:
                held = self._pull_outliers(held, notes, left_out)
                if self.bound_outliers:
                    held = self._bound_norms(held, notes)
        finally:
            self._norms.clear()
        return held, notes, left_out

    def _bound_examples(self, held: list[FitResult], notes: list[Note]) -> list[FitResult]:
        multiple = self.validation.examples_multiple
        if multiple is None:
            return held
        claims = [r.num_examples for r in held]
        bounded = bound_examples(claims, multiple, None)
        out = []
        for result, claim, count in zip(held, claims, bounded, strict=True):
            if count != claim:
                notes.append(
                    (
                        result.node_id,
                        f"claimed {claim} examples, counted {count} ("
                        f"examples_multiple={multiple:g} x the round's median claim)",
                    )
                )
                result = replace(result, num_examples=count)
            out.append(result)
        return out

    def _bound_norms(self, held: list[FitResult], notes: list[Note]) -> list[FitResult]:
        multiple = self.validation.norm_multiple
        if multiple is None:
            return held
        norms = [self._norm(r.arrays) for r in held]
        bound = norm_bound(norms, multiple)
        out = []
        for result, norm in zip(held, norms, strict=True):
            if norm > bound:
                notes.append(
                    (
                        result.node_id,
                        f"update norm {norm:.4g} scaled to {bound:.4g} ("
                        f"norm_multiple={multiple:g} x the round's median norm)",
                    )
                )
                result = replace(
                    result, arrays=scale_change(result.arrays, self.current, bound / norm)
                )
            out.append(result)
        return out

    def _norm(self, arrays: Arrays) -> float:
        """The change norm taken on arrival, or now for arrays made since (pulled in)."""
        taken, norm = self._norms.get(id(arrays), (None, 0.0))
        return norm if taken is arrays else change_norm(arrays, self.current)

    def _pull_outliers(
        self, held: list[FitResult], notes: list[Note], left_out: list[Note]
    ) -> list[FitResult]:
        """Layer 4: far outliers leave the round, near ones are pulled in."""
        v = self.validation
        if v.anomaly_threshold is None or len(held) < v.min_updates:
            return held
        if self.bound_outliers:
            near, far = v.pull_threshold, v.quarantine_threshold
        else:
            near = far = v.anomaly_threshold
        lowest = min(t for t in (near, far, math.inf) if t is not None)
        updates = [r.arrays for r in held]
        distances = median_distances(updates)
        typical = float(np.median(distances))
        if not np.any(distances > lowest * typical):
            return held
        center = coordinate_median(updates)
        out = []
        for result, distance in zip(held, distances, strict=True):
            score = float(distance) / typical if typical > 0.0 else math.inf
            if far is not None and score > far:
                left_out.append(
                    (
                        result.node_id,
                        f"left out of this round: anomaly score {score:.2f} > "
                        f"{'quarantine' if self.bound_outliers else 'anomaly'}_threshold="
                        f"{far:g} (its distance to the round's coordinate-wise median update, "
                        "in median distances)",
                    )
                )
            elif near is not None and score > near:
                notes.append(
                    (
                        result.node_id,
                        f"anomaly score {score:.2f} > pull_threshold={near:g}: pulled in to "
                        "the median distance from the round's coordinate-wise median update",
                    )
                )
                arrays = pull_toward(result.arrays, center, float(distance), typical)
                out.append(replace(result, arrays=arrays))
            else:
                out.append(result)
        return out


class RecentBounds:
    """Layers 3 and 5 for updates that arrive one at a time (the asynchronous loop): each is
    bounded against itself and the last ``window`` updates, as counted, as a round's are
    against the round's. (Layer 4 needs updates of one model version side by side: it does
    not apply.)
    """

    def __init__(self, validation: Validation, window: int) -> None:
        self.validation = validation
        self._claims: deque[int] = deque(maxlen=window)
        self._norms: deque[float] = deque(maxlen=window)

    def bound(self, result: FitResult, base: Arrays) -> tuple[FitResult, list[str]]:
        """``result`` bounded, with a note for each bound that moved it; ``base`` is the
        arrays its node trained from."""
        v, notes = self.validation, []
        claim, norm = result.num_examples, change_norm(result.arrays, base)
        count = bound_examples([*self._claims, claim], v.examples_multiple, v.max_examples)[-1]
        limit = (
            math.inf
            if v.norm_multiple is None
            else norm_bound([*self._norms, norm], v.norm_multiple)
        )
        # the window keeps what was counted, so a node cannot raise its own bounds
        self._claims.append(count)
        self._norms.append(min(norm, limit))
        if count != claim:
            notes.append(f"claimed {claim} examples, counted {count} (Validation's bounds)")
            result = replace(result, num_examples=count)
        if norm > limit:
            notes.append(f"update norm {norm:.4g} scaled to {limit:.4g} (norm_multiple)")
            result = replace(result, arrays=scale_change(result.arrays, base, limit / norm))
        return result, notes


def evaluate_problem(reply: Message) -> str | None:
    """Why an evaluate reply cannot enter the federated metrics (a failure, a non-finite loss
    or metric), or None; its example count is bounded afterwards, with the round's others."""
    problem = evaluate_reply_problem(reply)
    if problem is not None:
        return problem
    for name, value in reply.metrics.items():
        if isinstance(value, float) and not math.isfinite(value):
            return f"reported metric {name[:64]!r} = {value!r}; expected a finite number"
    return None


def change_norm(arrays: Arrays, current: Arrays) -> float:
    """L2 norm of ``arrays - current`` over all float arrays, a block of coordinates at a time
    through this thread's scratch block (``scratch.py``): no temporary the size of the update,
    no fresh memory per call. A float32 model's blocks are summed in float32 (relative error
    ~1e-7, measured over 1e7 coordinates) and the blocks' sums in float64; a block whose
    float32 sum overflows is summed again in float64."""
    total = 0.0
    for name, ref in current.items():
        if ref.dtype.kind != "f":
            continue
        wide = np.promote_types(ref.dtype, np.float32)
        sent, base, buf = arrays[name].reshape(-1), ref.reshape(-1), scratch(wide)
        for i in range(0, base.size, BLOCK):
            delta = buf[: min(BLOCK, base.size - i)]
            with np.errstate(over="ignore"):  # caught below
                np.subtract(sent[i : i + BLOCK], base[i : i + BLOCK], out=delta, dtype=wide)
                part = float(np.dot(delta, delta))
            if math.isinf(part) and wide != np.float64:
                delta64 = sent[i : i + BLOCK].astype(np.float64) - base[i : i + BLOCK]
                part = float(np.dot(delta64, delta64))
            total += part
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
