"""A run does not die because nodes blinked: with too few nodes at sampling time, the round
waits for them (``ServerApp.node_wait``), says so in the log, and samples as it would have."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence

import numpy as np
import pytest

from pollinate import Arrays, Client, FedAvg, RunError, ServerApp, SimulationGrid
from pollinate.client import Context, handle
from pollinate.loop import Grid, run
from pollinate.loop.grid import Timeout
from pollinate.records import Message
from pollinate.strategy import Sampling

WAIT = 30.0


class Step(Client):
    def fit(self, arrays, config):  # type: ignore[no-untyped-def]
        return Arrays({"w": arrays["w"] + 1}), 1, {}

    def evaluate(self, arrays, config):  # type: ignore[no-untyped-def]
        return 0.0, 1, {}


class BlinkingGrid(Grid):
    """Four nodes that all vanish after the first round's fit and come back once the test
    says so: ``nodes()`` says who is connected, as a hub's fleet does."""

    def __init__(self) -> None:
        self.back = threading.Event()
        self.gone = threading.Event()
        self.sent: list[Message] = []

    def nodes(self) -> list[int]:
        if self.gone.is_set() and not self.back.is_set():
            return []
        return [0, 1, 2, 3]

    def dispatch(self, instructions: Sequence[Message], timeout: Timeout) -> Iterator[Message]:
        for task in instructions:
            self.sent.append(task)
            context = Context(node_id=task.node_id, partition_id=0, num_partitions=1)
            yield handle(lambda ctx: Step(), context, task)
        if instructions and instructions[0].kind == "fit" and instructions[0].round == 1:
            self.gone.set()


def app(rounds: int, node_wait: float = 600.0) -> ServerApp:
    return ServerApp(
        FedAvg(sampling=Sampling(fraction_fit=0.5)),
        num_rounds=rounds,
        initial_arrays=Arrays({"w": np.zeros(2)}),
        node_wait=node_wait,
    )


def test_when_every_node_blinks_the_round_waits_logs_it_and_the_run_finishes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    grid = BlinkingGrid()
    result: list[object] = []
    with caplog.at_level(logging.WARNING, logger="pollinate.loop"):
        worker = threading.Thread(target=lambda: result.append(run(grid, app(3), seed=4)))
        worker.start()
        deadline = time.monotonic() + WAIT
        while "waiting up to 600s" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "0 of the 2 clients evaluate needs are connected" in caplog.text
        grid.back.set()
        worker.join(WAIT)
    assert not worker.is_alive() and result, "the run did not finish after the nodes came back"
    rounds = result[0].history.rounds  # type: ignore[attr-defined]
    assert [(r.replies, r.failures) for r in rounds[1:]] == [(2, 0)] * 3


def test_a_run_that_waited_samples_as_one_that_did_not() -> None:
    steady = BlinkingGrid()
    steady.back.set()
    run(steady, app(3), seed=4)
    blinking = BlinkingGrid()
    threading.Timer(0.5, blinking.back.set).start()
    run(blinking, app(3), seed=4)

    def fits(grid: BlinkingGrid) -> list[tuple[int, int]]:
        return [(m.round, m.node_id) for m in grid.sent if m.kind == "fit"]

    assert fits(blinking) == fits(steady)


def test_nodes_that_stay_away_past_node_wait_end_the_run_with_the_reason() -> None:
    grid = BlinkingGrid()  # never back
    started = time.monotonic()
    with pytest.raises(RunError, match="needs 2 clients for evaluate but only 0"):
        run(grid, app(3, node_wait=0.3))
    assert time.monotonic() - started < WAIT


def test_a_simulation_with_too_few_clients_fails_at_once() -> None:
    # virtual clients are always there: waiting would bring no more
    grid = SimulationGrid(lambda ctx: Step(), 1)
    started = time.monotonic()
    try:
        with pytest.raises(RunError, match="needs 2 clients for fit but only 1"):
            run(grid, app(1))
    finally:
        grid.close()
    assert time.monotonic() - started < WAIT / 2


def test_node_wait_must_be_finite_seconds() -> None:
    for bad in (-1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="node_wait must be a finite number"):
            app(1, node_wait=bad)


class StepFromZero(Step):
    def get_arrays(self, config):  # type: ignore[no-untyped-def]
        return Arrays({"w": np.zeros(2)})


class LateGrid(BlinkingGrid):
    """No node until the test says so: a run submitted before its nodes connected."""

    def nodes(self) -> list[int]:
        return [0, 1] if self.back.is_set() else []

    def dispatch(self, instructions: Sequence[Message], timeout: Timeout) -> Iterator[Message]:
        for task in instructions:
            context = Context(node_id=task.node_id, partition_id=0, num_partitions=1)
            yield handle(lambda ctx: StepFromZero(), context, task)


def test_a_run_without_initial_arrays_waits_for_a_node_to_provide_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    grid = LateGrid()
    late = ServerApp(FedAvg(), num_rounds=1, node_wait=WAIT)
    result: list[object] = []
    with caplog.at_level(logging.WARNING, logger="pollinate.loop"):
        worker = threading.Thread(target=lambda: result.append(run(grid, late, seed=1)))
        worker.start()
        deadline = time.monotonic() + WAIT
        while "to provide the initial arrays; waiting" not in caplog.text:
            assert time.monotonic() < deadline, "the run did not say it waits for a node"
            time.sleep(0.05)
        grid.back.set()
        worker.join(WAIT)
    assert not worker.is_alive() and result, "the run did not finish once a node connected"
    assert result[0].history.rounds[1].replies == 2  # type: ignore[attr-defined]


def test_with_no_node_within_node_wait_the_run_says_how_to_fix_it() -> None:
    with pytest.raises(RunError, match="no client connected within 0.2s.*\nHint: start"):
        run(LateGrid(), ServerApp(FedAvg(), num_rounds=1, node_wait=0.2), seed=1)
