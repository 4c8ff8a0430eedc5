"""Checkpoints: their bytes on disk, and a resumed run that is the uninterrupted one.

Each test names the invariant it checks (see loop/checkpoint.py and loop/run.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from pollinate import Arrays, Client, FedAdam, FedAvg, FedAvgM, SimulationGrid, WireError, wire
from pollinate.loop import History, RoundFinished, RoundRecord, ServerApp, run
from pollinate.loop.checkpoint import Checkpoint, decode, iter_encode
from pollinate.loop.events import Event
from pollinate.loop.history import WALL_TIMES
from pollinate.records import Config, Message, Metrics
from pollinate.strategy import Sampling
from pollinate.strategy.base import Strategy

ROUNDS = 5


def encoded(checkpoint: Checkpoint) -> bytes:
    return b"".join(bytes(chunk) for chunk in iter_encode(checkpoint, chunk_size=64))


def assert_same_arrays(got: Arrays, expected: Arrays) -> None:
    assert list(got) == list(expected)
    for name in expected:
        assert got[name].dtype == expected[name].dtype, name
        assert got[name].shape == expected[name].shape, name
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)


# --- bytes on disk ----------------------------------------------------------------------------


def test_a_checkpoint_survives_its_bytes_with_every_dtype_shape_and_slashed_name() -> None:
    model = Arrays(
        {
            "conv/1.weight": np.arange(24, dtype=np.float32).reshape(2, 3, 4),
            "conv/1.bias": np.array([1.5, -2.25], dtype=np.float64),
            "embed/table": np.arange(6, dtype=np.int64).reshape(3, 2),
            "half": np.array([0.5, 1.0, 65504.0], dtype=np.float16),
            "mask": np.array([True, False, True]),
            "steps": np.array(7, dtype=np.uint32),  # a 0-d array
            "empty": np.zeros((0, 3), dtype=np.int8),
        }
    )
    state = Arrays(
        {
            "m/conv/1.weight": np.full((2, 3, 4), 0.25),
            "v/conv/1.weight": np.full((2, 3, 4), 1e-18),
            "phase": np.array([1 + 2j, -3j], dtype=np.complex128),
        }
    )
    history = History([RoundRecord(round=0), RoundRecord(round=1, replies=3)])

    back = decode(encoded(Checkpoint(3, model, state, history)), history)

    assert back.round == 3
    assert_same_arrays(back.arrays, model)
    assert_same_arrays(back.strategy_state, state)
    assert back.history is history  # the history travels beside the bytes, not in them


def test_a_checkpoint_of_a_strategy_without_state_decodes_to_an_empty_state() -> None:
    model = Arrays({"w": np.ones(3, np.float32)})
    back = decode(encoded(Checkpoint(0, model)))
    assert back.round == 0
    assert_same_arrays(back.arrays, model)
    assert len(back.strategy_state) == 0
    assert back.history.rounds == []


@pytest.mark.parametrize(
    "message",
    [
        Message("fit", task_id="t", node_id=1, arrays=Arrays({"model/w": np.zeros(2)})),
        Message("get_arrays", is_reply=True, arrays=Arrays({"w": np.zeros(2)})),
        Message("get_arrays", is_reply=True, arrays=Arrays({"optimizer/m": np.zeros(2)})),
    ],
    ids=["a fit instruction", "unprefixed names", "an unknown prefix"],
)
def test_a_wire_message_that_is_not_a_checkpoint_is_refused(message: Message) -> None:
    data = b"".join(bytes(chunk) for chunk in wire.iter_encode(message))
    with pytest.raises(WireError, match="not a checkpoint"):
        decode(data)


def test_bytes_that_are_no_wire_message_are_a_wire_error() -> None:
    data = encoded(Checkpoint(1, Arrays({"w": np.ones(4)})))
    with pytest.raises(WireError):
        decode(data[: len(data) // 2])


# --- a resumed run is the uninterrupted run ---------------------------------------------------


class Pull(Client):
    """Pulls the weights towards its own partition's target, with its own number of examples;
    reports a metric and a loss that depend on both, so the history tells rounds apart."""

    def __init__(self, partition: int) -> None:
        self.partition = partition

    def fit(self, arrays: Arrays, config: Config) -> tuple[Arrays, int, Metrics]:
        target = float(self.partition) - 2.0
        moved = {k: v + 0.3 * (target - v) for k, v in arrays.items()}
        return Arrays(moved), 10 + self.partition, {"target": target}

    def evaluate(self, arrays: Arrays, config: Config) -> tuple[float, int, Metrics]:
        loss = float(np.abs(arrays["w"] - self.partition).mean())
        return loss, 5 + self.partition, {"acc": 1.0 / (1.0 + loss)}


def centralized(rnd: int, arrays: Arrays) -> tuple[float, dict[str, Any]]:
    return float(np.square(arrays["w"]).sum()), {"b": float(arrays["b"].sum())}


STRATEGIES: dict[str, Callable[[], Strategy]] = {
    "FedAvg": lambda: FedAvg(
        evaluate_fn=centralized, sampling=Sampling(fraction_fit=0.5, fraction_evaluate=0.5)
    ),
    "FedAvgM": lambda: FedAvgM(
        evaluate_fn=centralized,
        server_momentum=0.9,
        sampling=Sampling(fraction_fit=0.5, fraction_evaluate=0.5),
    ),
    "FedAdam": lambda: FedAdam(
        evaluate_fn=centralized,
        eta=0.05,
        tau=1e-3,
        sampling=Sampling(fraction_fit=0.5, fraction_evaluate=0.5),
    ),
}


def app(strategy: Strategy) -> ServerApp:
    initial = Arrays({"w": np.zeros((3, 2), np.float32), "b": np.zeros(2, np.float64)})
    return ServerApp(strategy, num_rounds=ROUNDS, initial_arrays=initial)


@pytest.fixture
def grid() -> Iterator[SimulationGrid]:
    grid = SimulationGrid(lambda ctx: Pull(ctx.partition_id), num_clients=6, concurrency=3)
    yield grid
    grid.close()


class Crash(Exception):
    """The hub's process died right after it stored a checkpoint."""


def interrupted_after(rnd: int, grid: SimulationGrid, strategy: Strategy) -> Checkpoint:
    """Run until the checkpoint of round ``rnd`` is stored, then crash; that checkpoint, as
    it would be read back from disk."""
    stored: list[Checkpoint] = []

    def store(checkpoint: Checkpoint) -> None:
        stored.append(decode(encoded(checkpoint), History(list(checkpoint.history.rounds))))
        if checkpoint.round == rnd:
            raise Crash

    with pytest.raises(Crash):
        run(grid, app(strategy), seed=11, on_checkpoint=store)
    return stored[-1]


def comparable(history: History) -> list[dict[str, Any]]:
    """The history without what a resumed run changes on purpose (timings, the mark)."""
    rounds = [r.to_dict() for r in history.rounds]
    for r in rounds:
        r.pop("resumed")
        for name in WALL_TIMES:
            r.pop(name)
    return rounds


@pytest.mark.parametrize("name", list(STRATEGIES))
@pytest.mark.parametrize("k", [0, 2, ROUNDS - 1])
def test_a_run_resumed_from_its_checkpoint_is_the_uninterrupted_run(
    grid: SimulationGrid, name: str, k: int
) -> None:
    make = STRATEGIES[name]
    uninterrupted = run(grid, app(make()), seed=11)
    checkpoint = interrupted_after(k, grid, make())

    resumed = run(grid, app(make()), seed=11, resume_from=checkpoint)

    assert_same_arrays(resumed.arrays, uninterrupted.arrays)
    assert comparable(resumed.history) == comparable(uninterrupted.history)
    assert [r.round for r in resumed.history.rounds] == list(range(ROUNDS + 1))


@pytest.mark.parametrize("name", ["FedAvgM", "FedAdam"])
def test_the_strategy_state_is_what_makes_the_resumed_run_exact(
    grid: SimulationGrid, name: str
) -> None:
    # the converse of the test above: without its momentum or moments the run goes elsewhere,
    # so that test would notice a checkpoint that lost them
    make = STRATEGIES[name]
    uninterrupted = run(grid, app(make()), seed=11)
    checkpoint = interrupted_after(2, grid, make())
    assert len(checkpoint.strategy_state) > 0
    forgetful = Checkpoint(checkpoint.round, checkpoint.arrays, Arrays(), checkpoint.history)

    resumed = run(grid, app(make()), seed=11, resume_from=forgetful)

    assert not np.allclose(resumed.arrays["w"], uninterrupted.arrays["w"])


def test_only_the_first_resumed_round_is_marked_resumed(grid: SimulationGrid) -> None:
    checkpoint = interrupted_after(2, grid, STRATEGIES["FedAvgM"]())
    resumed = run(grid, app(STRATEGIES["FedAvgM"]()), seed=11, resume_from=checkpoint)
    assert [r.resumed for r in resumed.history.rounds] == [False, False, False, True, False, False]


def test_an_uninterrupted_run_marks_no_round_resumed(grid: SimulationGrid) -> None:
    result = run(grid, app(FedAvg()), seed=11)
    assert not any(r.resumed for r in result.history.rounds)


def test_a_run_resumed_after_its_last_round_runs_no_round(grid: SimulationGrid) -> None:
    uninterrupted = run(grid, app(FedAdam()), seed=11)
    checkpoint = interrupted_after(ROUNDS, grid, FedAdam())
    calls: list[int] = []
    resumed = run(
        grid,
        app(FedAdam()),
        seed=11,
        resume_from=checkpoint,
        on_checkpoint=lambda c: calls.append(c.round),
    )
    assert calls == []
    assert_same_arrays(resumed.arrays, uninterrupted.arrays)
    assert not any(r.resumed for r in resumed.history.rounds)


# --- when checkpoints are taken -----------------------------------------------------------


def test_every_round_is_checkpointed_once_before_it_is_reported(grid: SimulationGrid) -> None:
    seen: list[tuple[str, int]] = []

    def on_event(event: Event) -> None:
        if isinstance(event, RoundFinished):
            seen.append(("reported", event.record.round))

    run(
        grid,
        app(FedAvgM()),
        seed=11,
        on_event=on_event,
        on_checkpoint=lambda c: seen.append(("checkpointed", c.round)),
    )
    expected = [(what, r) for r in range(ROUNDS + 1) for what in ("checkpointed", "reported")]
    assert seen == expected


def test_a_resumed_run_checkpoints_and_reports_only_the_rounds_it_runs(
    grid: SimulationGrid,
) -> None:
    checkpoint = interrupted_after(2, grid, FedAvg())
    seen: list[tuple[str, int]] = []

    def on_event(event: Event) -> None:
        if isinstance(event, RoundFinished):
            seen.append(("reported", event.record.round))

    run(
        grid,
        app(FedAvg()),
        seed=11,
        resume_from=checkpoint,
        on_event=on_event,
        on_checkpoint=lambda c: seen.append(("checkpointed", c.round)),
    )
    expected = [(what, r) for r in range(3, ROUNDS + 1) for what in ("checkpointed", "reported")]
    assert seen == expected


def test_a_checkpoint_holds_the_round_its_arrays_and_the_history_up_to_it(
    grid: SimulationGrid,
) -> None:
    checkpoints: list[tuple[int, Arrays, list[int]]] = []
    run(
        grid,
        app(FedAvgM()),
        seed=11,
        on_checkpoint=lambda c: checkpoints.append(
            (c.round, c.arrays, [r.round for r in c.history.rounds])
        ),
    )
    assert [(rnd, rounds) for rnd, _, rounds in checkpoints] == [
        (r, list(range(r + 1))) for r in range(ROUNDS + 1)
    ]
    assert_same_arrays(checkpoints[0][1], app(FedAvg()).initial_arrays or Arrays())


def test_a_checkpoint_is_the_state_at_its_round_and_does_not_change_afterwards(
    grid: SimulationGrid,
) -> None:
    # a frozen Checkpoint is "the state of a run at the end of round": one kept in memory
    # (not serialised at once) must still be that state when the run has gone on
    kept: list[Checkpoint] = []
    result = run(grid, app(FedAvgM()), seed=11, on_checkpoint=kept.append)

    after_two = kept[2]
    assert [r.round for r in after_two.history.rounds] == [0, 1, 2]
    resumed = run(grid, app(FedAvgM()), seed=11, resume_from=after_two)
    assert comparable(resumed.history) == comparable(result.history)
