"""Summed fit stages (loop/summing.py), in process: a grid that sums each worker's share
gives the round exactly the history the per-reply path gives, and is asked to sum only
where nothing can tell the difference."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from pollinate import Arrays, Client, FedAvg, FedMedian, ServerApp, Validation
from pollinate.aggregate import PartialSum
from pollinate.dp import AdaptiveClipping, DifferentialPrivacy
from pollinate.loop import Event, ReplyBounded, RoundFinished, run
from pollinate.loop.grid import Timeout
from pollinate.loop.history import WALL_TIMES
from pollinate.loop.summing import Answered, Seen, Summing, WorkerSum
from pollinate.records import Message
from pollinate.simulation import SimulationGrid
from pollinate.strategy import Sampling

STREAMING = Validation(anomaly_threshold=None, norm_multiple=None, examples_multiple=None)


class Mixed(Client):
    """Node 1 raises, node 2 sends NaN, node 3 a huge update, node 4 claims many examples;
    the rest train (a float32 model, a change that depends on the node)."""

    def __init__(self, node: int) -> None:
        self.node = node

    def fit(self, arrays, config):
        if self.node == 1:
            raise ValueError("no data today")
        w = arrays["w"] + np.float32(0.1 * (self.node + 1) / 3)
        if self.node == 2:
            w = np.full_like(w, np.nan)
        if self.node == 3:
            w = w + np.float32(1e6)
        examples = 10**6 if self.node == 4 else 7 + self.node
        return Arrays({"w": w}), examples, {"loss": 1.0 / (self.node + 1)}


class SummingGrid(SimulationGrid):
    """A SimulationGrid that sums like a grid of ``workers`` remote workers: node ``n``'s
    update is screened and summed on worker ``n % workers``; one partial per worker."""

    def __init__(self, *args: Any, workers: int = 2, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.workers, self.partials = workers, 0

    @property
    def sums_updates(self) -> bool:
        return True

    def dispatch_summed(
        self, instructions: Sequence[Message], timeout: Timeout, summing: Summing, seen: Seen
    ) -> Iterator[Answered | PartialSum]:
        if not instructions:
            return
        current = instructions[0].arrays
        sums = [WorkerSum(current, summing) for _ in range(self.workers)]
        facts = []
        for reply in self.dispatch(instructions, timeout):
            seen()
            facts.append(sums[reply.node_id % self.workers].take(reply))
        for worker in sums:
            self.partials += 1
            yield worker.partial()
        yield from facts


def _app(validation: Validation, strategy: Any = None, **sampling: Any) -> ServerApp:
    strategy = strategy or FedAvg(sampling=Sampling(fraction_evaluate=0.0, **sampling))
    initial = Arrays({"w": np.linspace(-1, 1, 50, dtype=np.float32)})
    return ServerApp(strategy, num_rounds=3, initial_arrays=initial, validation=validation)


def _history(
    grid: SimulationGrid, app: ServerApp, events: list[Event] | None = None
) -> list[dict[str, Any]]:
    """The run's rounds without wall-clock times; its events (but ``RoundFinished``, which
    holds them) into ``events``."""
    keep = [] if events is None else events
    try:
        result = run(grid, app, seed=4, on_event=keep.append)
    finally:
        grid.close()
    keep[:] = [e for e in keep if not isinstance(e, RoundFinished)]
    records = [r.to_dict() for r in result.history.rounds]
    for record in records:
        for name in WALL_TIMES:
            record.pop(name)
    return json.loads(json.dumps(records))


@pytest.mark.parametrize(
    "validation",
    [STREAMING, replace(STREAMING, max_norm=50.0, max_examples=100)],
    ids=["checks", "max-norm-and-max-examples"],
)
def test_summed_rounds_record_the_history_of_the_per_reply_path(validation: Validation) -> None:
    """Failures, rejections (NaN, max_norm), max_examples notes, fit metrics and the model:
    the same, field by field, whichever path the round took."""
    events: tuple[list[Event], list[Event]] = ([], [])
    each = _history(SimulationGrid(lambda ctx: Mixed(ctx.node_id), 9), _app(validation), events[0])
    grid = SummingGrid(lambda ctx: Mixed(ctx.node_id), 9, workers=2)
    summed = _history(grid, _app(validation), events[1])
    assert summed == each
    assert events[1] == events[0]  # received, failed, rejected and bounded, in order
    assert grid.partials == 2 * 3  # one partial per worker per round
    kinds = {f["node_id"]: f["kind"] for f in summed[1]["failed"]}
    assert kinds[1] == "client" and kinds[2] == "rejected"
    assert kinds.get(3) == ("rejected" if validation.max_norm else None)
    bounded = [e for e in events[1] if isinstance(e, ReplyBounded)]
    assert len(bounded) == (3 if validation.max_examples else 0)  # node 4, each round


def test_a_summed_round_with_a_sample_keeps_the_same_history() -> None:
    each = _history(
        SimulationGrid(lambda ctx: Mixed(ctx.node_id), 20), _app(STREAMING, fraction_fit=0.5)
    )
    grid = SummingGrid(lambda ctx: Mixed(ctx.node_id), 20, workers=3)
    assert _history(grid, _app(STREAMING, fraction_fit=0.5)) == each
    assert grid.partials == 3 * 3


def _dp(adaptive: bool) -> DifferentialPrivacy:
    inner = FedAvg(sampling=Sampling(fraction_evaluate=0.0))
    # bounds that some of Mixed's changes (norms 0.24 x (node + 1)) are within, some not:
    # the count within the bound moves the adaptive one, so a lost tally changes the history
    if adaptive:
        clipping = AdaptiveClipping(initial_norm=1.0, count_stddev=0.5)
        return DifferentialPrivacy(inner, noise_multiplier=0.3, adaptive=clipping, noise_seed=7)
    return DifferentialPrivacy(inner, noise_multiplier=0.3, clipping_norm=0.5, noise_seed=7)


@pytest.mark.parametrize("adaptive", [False, True], ids=["fixed-bound", "adaptive-bound"])
def test_dp_fedavg_summed_on_workers_records_the_per_reply_history(adaptive: bool) -> None:
    """Each worker clips and sums its changes and counts those within the bound: the
    noised model, the bound each round (it moves with that count) and every record as
    when each update comes to the hub."""
    each = _history(
        SimulationGrid(lambda ctx: Mixed(ctx.node_id), 9), _app(STREAMING, _dp(adaptive))
    )
    grid = SummingGrid(lambda ctx: Mixed(ctx.node_id), 9, workers=2)
    summed = _history(grid, _app(STREAMING, _dp(adaptive)))
    assert summed == each
    assert grid.partials == 2 * 3
    bounds = [r["fit"]["dp_clipping_norm"] for r in summed[1:]]
    assert (len(set(bounds)) > 1) == adaptive  # the bound moved: the tallies arrived


@pytest.mark.parametrize(
    "app",
    [
        _app(Validation()),  # relative bounds: every update side by side at the hub
        _app(STREAMING, FedMedian(sampling=Sampling(fraction_evaluate=0.0))),  # needs each
    ],
    ids=["relative-screen", "robust-strategy"],
)
def test_rounds_that_need_each_update_keep_the_per_reply_path(app: ServerApp) -> None:
    grid = SummingGrid(lambda ctx: Mixed(ctx.node_id), 9)
    _history(grid, app)
    assert grid.partials == 0


class Slow(Client):
    def __init__(self, node: int) -> None:
        self.node = node

    def fit(self, arrays, config):
        if self.node == 0:
            import time

            time.sleep(1.5)
        return arrays, 1, {}


def test_a_summed_task_without_facts_by_the_deadline_is_a_timeout() -> None:
    app = replace(_app(STREAMING), round_timeout=0.5)
    grid = SummingGrid(lambda ctx: Slow(ctx.node_id), 4)
    history = _history(grid, app)
    assert [(f["node_id"], f["kind"]) for f in history[1]["failed"]] == [(0, "timeout")]
    assert history[1]["replies"] == 3 and history[1]["applied"]
    assert not math.isnan(history[1]["failures"])
