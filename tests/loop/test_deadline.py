"""Rounds end: a stage's default deadline follows from its own replies (``RoundDeadline``), and
a node that never answers costs the round only its own reply."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterator, Sequence

import numpy as np
import pytest

from pollinate import Arrays, Client, FedAvg, ServerApp, SimulationGrid
from pollinate.client import Context, handle
from pollinate.loop import Grid, run
from pollinate.loop.deadline import RoundDeadline, StageClock
from pollinate.loop.grid import Timeout, ends_at
from pollinate.records import Message
from pollinate.strategy import Sampling

WAIT = 30.0  # generous bound: only matters when something hangs


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# --- the rule, in virtual time --------------------------------------------------------------


def test_once_half_the_tasks_answered_the_stage_ends_at_five_times_their_time() -> None:
    clock = FakeTime()
    stage = RoundDeadline().clock(10, now=clock)
    for _ in range(5):  # the quorum: half of 10
        clock.now += 30.0
        stage.replied()
    # 150 s for the quorum: the stage ends 5 x 150 s after its start
    assert stage.remaining() == pytest.approx(5 * 150.0 - 150.0)
    clock.now += 1000.0
    stage.replied()  # later replies do not move it
    assert stage.remaining() == pytest.approx(750.0 - 1150.0)


def test_a_fast_quorum_leaves_the_stragglers_at_least_the_floor() -> None:
    clock = FakeTime()
    stage = RoundDeadline(floor=60.0).clock(4, now=clock)
    clock.now += 1.0
    stage.replied()
    stage.replied()
    assert stage.remaining() == pytest.approx(59.0)


def test_before_the_quorum_the_stage_waits_while_replies_keep_coming() -> None:
    clock = FakeTime()
    stage = RoundDeadline(patience=3600.0).clock(100, now=clock)
    assert stage.remaining() == pytest.approx(3600.0)
    for _ in range(10):  # slow, but not silent: each reply restarts the patience
        clock.now += 3000.0
        stage.replied()
        assert stage.remaining() == pytest.approx(3600.0)
    clock.now += 3600.0
    assert stage.remaining() <= 0


def test_a_single_task_waits_for_its_reply_up_to_the_patience() -> None:
    clock = FakeTime()
    stage = RoundDeadline(patience=50.0).clock(1, now=clock)
    clock.now += 49.0
    assert stage.remaining() == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"quorum": 0}, "quorum must be a finite number in \\(0, 1\\]"),
        ({"quorum": 1.5}, "quorum must be a finite number in \\(0, 1\\]"),
        ({"multiple": -1}, "multiple must be a finite number > 0"),
        ({"floor": math.nan}, "floor must be a finite number > 0"),
        ({"patience": True}, "patience must be a finite number > 0"),
    ],
)
def test_impossible_rules_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises((TypeError, ValueError), match=message):
        RoundDeadline(**kwargs)  # type: ignore[arg-type]


def test_the_default_round_timeout_is_the_derived_rule_and_inf_waits_for_all() -> None:
    app = ServerApp(FedAvg())
    assert app.round_timeout is None
    assert isinstance(app.stage_timeout(4), StageClock)
    assert ServerApp(FedAvg(), round_timeout=math.inf).stage_timeout(4) is None
    assert ServerApp(FedAvg(), round_timeout=12.5).stage_timeout(4) == 12.5
    for bad in (0, -1, math.nan, "60"):
        with pytest.raises(ValueError, match="round_timeout must be seconds > 0"):
            ServerApp(FedAvg(), round_timeout=bad)  # type: ignore[arg-type]


def test_ends_at_reads_a_deadline_again_each_time() -> None:
    class Moving:
        left = 100.0

        def remaining(self) -> float:
            return self.left

    moving = Moving()
    ends = ends_at(moving)
    first = ends()
    moving.left = 1.0
    assert first is not None and (ends() or 0) < first - 90
    assert ends_at(None)() is None


# --- in a run, in real time ----------------------------------------------------------------


class Step(Client):
    def fit(self, arrays, config):  # type: ignore[no-untyped-def]
        return Arrays({"w": arrays["w"] + 1}), 1, {}

    def evaluate(self, arrays, config):  # type: ignore[no-untyped-def]
        return 0.0, 1, {}


class SilentNodeGrid(Grid):
    """Four nodes; node 3 is connected but never answers (it took no task). The others
    answer at once."""

    def __init__(self) -> None:
        self.timeouts: list[Timeout] = []

    def nodes(self) -> list[int]:
        return [0, 1, 2, 3]

    def dispatch(self, instructions: Sequence[Message], timeout: Timeout) -> Iterator[Message]:
        self.timeouts.append(timeout)
        ends = ends_at(timeout)
        for task in instructions:
            if task.node_id != 3:
                context = Context(node_id=task.node_id, partition_id=0, num_partitions=1)
                yield handle(lambda ctx: Step(), context, task)
        deadline = ends()
        assert deadline is not None, "the default deadline must be finite"
        # the silent node: nothing comes until the deadline (read again: it may move)
        while (deadline := ends() or 0.0) > time.monotonic():
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))


def test_a_node_that_never_answers_costs_the_round_only_its_own_reply() -> None:
    grid = SilentNodeGrid()
    rule = RoundDeadline(floor=0.3, multiple=2.0)  # the default rule, scaled down to a test
    app = ServerApp(
        FedAvg(sampling=Sampling(fraction_evaluate=0.0)),
        num_rounds=2,
        initial_arrays=Arrays({"w": np.zeros(2)}),
        round_timeout=rule,
    )
    started = time.monotonic()
    result = run(grid, app)
    assert time.monotonic() - started < WAIT
    assert all(isinstance(t, StageClock) for t in grid.timeouts)
    for record in result.history.rounds[1:]:
        assert (record.replies, record.failures, record.applied) == (3, 1, True)
        [failure] = record.failed
        assert failure.node_id == 3 and "no reply by the stage's deadline" in failure.reason
    assert result.arrays["w"].tolist() == [2.0, 2.0]


def test_a_simulation_stage_ends_at_a_deadline_that_moves() -> None:
    release = threading.Event()

    class Hang(Client):
        def fit(self, arrays, config):  # type: ignore[no-untyped-def]
            if config.get("hang"):
                release.wait(WAIT)
            return arrays, 1, {}

    class Shrinking:
        """A deadline far away until the test moves it to now."""

        left = 3600.0

        def remaining(self) -> float:
            return self.left

    grid = SimulationGrid(lambda ctx: Hang(), 2, concurrency=2)
    deadline = Shrinking()
    tasks = [
        Message("fit", task_id="a", node_id=0, arrays=Arrays({"w": np.zeros(1)})),
        Message(
            "fit", task_id="b", node_id=1, arrays=Arrays({"w": np.zeros(1)}), config={"hang": 1}
        ),
    ]
    try:
        replies = grid.dispatch(tasks, deadline)
        assert next(replies).task_id == "a"
        deadline.left = 0.0  # as a StageClock does once its quorum answered long ago
        started = time.monotonic()
        assert list(replies) == []  # the hanging task is abandoned at the moved deadline
        assert time.monotonic() - started < WAIT / 2
    finally:
        release.set()
        grid.close()


def test_simulation_with_the_default_deadline_is_not_slower_and_repeats(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def once() -> list[float]:
        app = ServerApp(
            FedAvg(sampling=Sampling(fraction_evaluate=0.0)),
            num_rounds=3,
            initial_arrays=Arrays({"w": np.zeros(2)}),
        )
        grid = SimulationGrid(lambda ctx: Step(), 5)
        try:
            return run(grid, app).arrays["w"].tolist()
        finally:
            grid.close()

    with caplog.at_level(logging.WARNING, logger="pollinate.loop"):
        assert once() == once() == [3.0, 3.0]
    assert "deadline" not in caplog.text
