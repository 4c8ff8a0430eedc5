"""The asynchronous run loop (loop/buffered.py), driven through grids the tests control.

Each test names the invariant or promise it checks. Replies that must arrive in a given order
come from a ``GatedGrid``, whose tasks wait until the test releases them; the rest run on a
real ``SimulationGrid``, with stragglers from its ``client_speed`` option.
"""

from __future__ import annotations

import itertools
import math
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import pytest

from pollinate import (
    Arrays,
    Client,
    RunError,
    ServerApp,
    SimulationGrid,
    Validation,
    run_simulation,
)
from pollinate.client import Context, handle
from pollinate.loop import (
    Event,
    Grid,
    ReplyBounded,
    ReplyReceived,
    RoundFinished,
    RunResult,
    StageStarted,
    run,
)
from pollinate.loop.checkpoint import Checkpoint
from pollinate.loop.grid import Timeout, ends_at
from pollinate.records import Message
from pollinate.strategy import FedAvgM, Sampling
from pollinate.strategy.fedbuff import FedBuff

WAIT = 30.0  # bound on any wait in these tests; only reached when something hangs


class Step(Client):
    """Partition ``p`` adds ``p + 1`` to the model and weighs ``p + 1`` examples."""

    def __init__(self, node: int, seconds: float = 0.0) -> None:
        self.node, self.seconds = node, seconds

    def fit(self, arrays, config):
        time.sleep(self.seconds)
        out = Arrays({k: v + (self.node + 1) for k, v in arrays.items()})
        return out, self.node + 1, {"node": float(self.node)}


def start() -> Arrays:
    return Arrays({"w": np.zeros(2)})


def fedbuff_app(rounds: int, timeout: float | None = None, **strategy: object) -> ServerApp:
    return ServerApp(
        FedBuff(evaluate_fn=lambda rnd, arrays: (float(arrays["w"][0]), {}), **strategy),  # type: ignore[arg-type]
        num_rounds=rounds,
        initial_arrays=start(),
        round_timeout=timeout,
    )


class GatedGrid(Grid):
    """Each task waits until the test releases it (or, without gates, is answered at once);
    replies come from ``client``. Records every task and the most ever in flight."""

    def __init__(self, num_nodes: int, client: Callable[[int], Client], gated: bool = True) -> None:
        self.num_nodes, self.client, self.gated = num_nodes, client, gated
        self.sent: list[Message] = []
        self.held: set[str] = set()  # tasks that never get a reply, gated or not
        self.in_flight = self.most_in_flight = 0
        self._gates: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def nodes(self) -> list[int]:
        return list(range(self.num_nodes))

    def gate(self, task_id: str) -> threading.Event:
        with self._lock:
            gate = self._gates.setdefault(task_id, threading.Event())
            if not self.gated:
                gate.set()
            return gate

    def release(self, *task_ids: str) -> None:
        for task_id in task_ids:
            self.gate(task_id).set()

    def release_all(self) -> None:
        """Every task now and to come: those the run left in flight end too."""
        with self._lock:
            self.gated = False
            for gate in self._gates.values():
                gate.set()

    def dispatch(self, instructions: Sequence[Message], timeout: Timeout) -> Iterator[Message]:
        [task] = instructions  # the loop sends one task per call
        deadline = ends_at(timeout)()
        wait = WAIT if deadline is None else min(WAIT, deadline - time.monotonic())
        with self._lock:
            self.sent.append(task)
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if task.task_id in self.held:
                time.sleep(wait)
                return
            if self.gated and not self.gate(task.task_id).wait(wait):
                return  # no reply within the deadline
            context = Context(node_id=task.node_id, partition_id=task.node_id, num_partitions=3)
            yield handle(lambda ctx: self.client(ctx.node_id), context, task)
        finally:
            with self._lock:
                self.in_flight -= 1


class Recorder:
    """Events, and a flag per finished step, for a run going on in a thread."""

    def __init__(self) -> None:
        self.events: list[tuple[float, Event]] = []
        self.steps: dict[int, threading.Event] = {}

    def __call__(self, event: Event) -> None:
        self.events.append((time.monotonic(), event))
        if isinstance(event, RoundFinished):
            self.finished(event.record.round).set()

    def finished(self, step: int) -> threading.Event:
        return self.steps.setdefault(step, threading.Event())

    def wait(self, step: int) -> None:
        assert self.finished(step).wait(WAIT), f"step {step} did not finish"


def in_thread(target: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    out: list[object] = []
    thread = threading.Thread(target=lambda: out.append(target()), daemon=True)
    thread.start()
    return thread, out


# --- a stale update is weighted by its staleness, against the version it trained from --------


def test_a_stale_update_counts_by_its_staleness_from_the_arrays_its_node_trained_from() -> None:
    grid = GatedGrid(3, Step)
    events = Recorder()
    app = fedbuff_app(2, buffer_size=2)
    thread, out = in_thread(lambda: run(grid, app, run_id="r", on_event=events))

    grid.release("r:1:fit:0", "r:1:fit:1")  # version 0 -> 1 from nodes 0 and 1
    events.wait(1)
    grid.release("r:1:fit:2", "r:2:fit:0")  # node 2 trained from version 0, node 0 from 1
    events.wait(2)
    thread.join(WAIT)
    grid.release_all()  # let the tasks left in flight end

    [result] = out
    assert isinstance(result, RunResult)
    v1 = (1 * 1 + 2 * 2) / 3  # fresh: weighted mean of +1 (1 example) and +2 (2 examples)
    # node 2: +3 on version 0, 3 examples, 1 step old; node 0: +1 on version 1, fresh
    v2 = v1 + (3 * (1 / math.sqrt(2)) * 3 + 1 * 1.0 * 1) / (3 + 1)
    history = result.history.rounds
    assert [r.round for r in history] == [0, 1, 2]
    assert history[1].centralized["loss"] == pytest.approx(v1)
    assert history[2].centralized["loss"] == pytest.approx(v2)
    assert (history[2].replies, history[2].fit["staleness"]) == (2, 0.5)


# --- equally fast nodes and K = N: FedAvg with a server learning rate ------------------------


class Shrink(Client):
    """A deterministic fit that depends on the model, the node and the round."""

    def __init__(self, node: int) -> None:
        self.node = node

    def fit(self, arrays, config):
        w = arrays["w"]
        return Arrays({"w": 0.9 * w + self.node - 0.1 * config["round"]}), 10 + self.node, {}


def test_equally_fast_nodes_with_k_equal_n_step_like_fedavg_with_a_server_learning_rate() -> None:
    arrays = Arrays({"w": np.linspace(-1, 1, 8).astype(np.float32)})
    common = {
        "on_fit_config_fn": lambda rnd: {"round": rnd},
        "sampling": Sampling(fraction_evaluate=0.0),
    }
    unbounded = Validation(anomaly_threshold=None, norm_multiple=None, examples_multiple=None)
    asynchronous = ServerApp(
        FedBuff(buffer_size=4, server_learning_rate=0.5, **common),  # type: ignore[arg-type]
        num_rounds=5,
        initial_arrays=arrays,
        validation=unbounded,  # node 3 steps far further than node 0: compare plain means
    )
    synchronous = ServerApp(
        FedAvgM(server_learning_rate=0.5, server_momentum=0.0, **common),  # type: ignore[arg-type]
        num_rounds=5,
        initial_arrays=arrays,
        validation=unbounded,
    )

    steps = run_simulation(asynchronous, lambda ctx: Shrink(ctx.node_id), num_clients=4)
    rounds = run_simulation(synchronous, lambda ctx: Shrink(ctx.node_id), num_clients=4)

    np.testing.assert_allclose(steps.arrays["w"], rounds.arrays["w"], rtol=1e-6)
    assert [r.replies for r in steps.history.rounds[1:]] == [4] * 5
    assert all(r.fit["staleness"] == 0.0 for r in steps.history.rounds[1:])


# --- no step waits for a straggler ---------------------------------------------------------------


def test_no_step_waits_for_a_straggler() -> None:
    # node 0 takes 2000 x 10 ms = 20 s per task; the whole run must take well under that
    grid = SimulationGrid(
        lambda ctx: Step(ctx.node_id, seconds=0.01),
        4,
        client_speed=lambda node: 2000.0 if node == 0 else 1.0,
    )
    events = Recorder()
    started = time.monotonic()
    try:
        result = run(grid, fedbuff_app(6, buffer_size=2), on_event=events)
    finally:
        grid.close()
    finished = [t for t, e in events.events if isinstance(e, RoundFinished)]

    assert len(finished) == 7 and finished[-1] - started < 5.0  # steps 0..6, none waited 20 s
    assert [r.replies for r in result.history.rounds[1:]] == [2] * 6
    contributors = {e.node_id for _, e in events.events if isinstance(e, ReplyReceived) and e.ok}
    assert 0 not in contributors and contributors == {1, 2, 3}


def test_the_same_straggler_holds_up_every_synchronous_round() -> None:
    """The contrast: FedAvg on the same grid waits for the slow node every round."""
    grid = SimulationGrid(
        lambda ctx: Step(ctx.node_id, seconds=0.01),
        4,
        client_speed=lambda node: 40.0 if node == 0 else 1.0,
    )
    app = ServerApp(
        FedAvgM(server_momentum=0.0, sampling=Sampling(fraction_evaluate=0.0)),
        num_rounds=2,
        initial_arrays=start(),
    )
    try:
        result = run(grid, app)
    finally:
        grid.close()
    assert all(r.seconds >= 0.39 for r in result.history.rounds[1:])  # >= 40 x 10 ms


# --- the history: one record per step ------------------------------------------------------------


def test_the_history_has_one_record_per_step_and_num_rounds_steps() -> None:
    events = Recorder()
    result = run_simulation(
        fedbuff_app(4, buffer_size=3),
        lambda ctx: Step(ctx.node_id, seconds=0.002),
        num_clients=5,
        on_event=events,
    )
    rounds = result.history.rounds
    assert [r.round for r in rounds] == [0, 1, 2, 3, 4]
    assert [(r.replies, r.failures, r.applied) for r in rounds[1:]] == [(3, 0, True)] * 4
    assert all("staleness" in r.fit and "loss" in r.centralized for r in rounds[1:])
    started = [e for _, e in events.events if isinstance(e, StageStarted)]
    assert [(e.round, e.stage, e.tasks) for e in started] == [(s, "fit", 3) for s in range(1, 5)]


def test_a_seeded_simulation_completes_and_learns() -> None:
    rng = np.random.default_rng(1)
    target = rng.normal(size=6)

    class LeastSquares(Client):
        def __init__(self, node: int) -> None:
            data = np.random.default_rng(node)
            self.x = data.normal(size=(40, 6))
            self.y = self.x @ target + 0.01 * data.normal(size=40)

        def fit(self, arrays, config):
            w = arrays["w"].copy()
            for _ in range(5):
                w -= 0.05 * self.x.T @ (self.x @ w - self.y) / len(self.y)
            return Arrays({"w": w}), len(self.y), {}

    def distance(rnd: int, arrays: Arrays) -> tuple[float, dict[str, float]]:
        return float(np.linalg.norm(arrays["w"] - target)), {}

    app = ServerApp(
        FedBuff(buffer_size=4, evaluate_fn=distance),
        num_rounds=30,
        initial_arrays=Arrays({"w": np.zeros(6)}),
    )
    result = run_simulation(
        app, lambda ctx: LeastSquares(ctx.node_id), num_clients=10, seed=7, concurrency=2
    )
    losses = [loss for _, loss in result.history.metric("centralized", "loss")]
    assert len(losses) == 31 and losses[-1] < 0.1 * losses[0]


# --- resuming ------------------------------------------------------------------------------------


class RecordingGrid(SimulationGrid):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.sent: list[Message] = []
        self._sent_lock = threading.Lock()

    def dispatch(self, instructions: Sequence[Message], timeout: Timeout) -> Iterator[Message]:
        with self._sent_lock:
            self.sent.extend(instructions)
        return super().dispatch(instructions, timeout)


def test_a_run_resumed_from_a_checkpoint_goes_on_with_the_next_step() -> None:
    checkpoints: list[Checkpoint] = []
    first = SimulationGrid(lambda ctx: Step(ctx.node_id), 3)
    try:
        run(first, fedbuff_app(2, buffer_size=2), run_id="r", on_checkpoint=checkpoints.append)
    finally:
        first.close()
    assert [c.round for c in checkpoints] == [0, 1, 2]

    again = RecordingGrid(lambda ctx: Step(ctx.node_id), 3)
    try:
        result = run(again, fedbuff_app(4, buffer_size=2), run_id="r", resume_from=checkpoints[2])
    finally:
        again.close()

    rounds = result.history.rounds
    assert [r.round for r in rounds] == [0, 1, 2, 3, 4]
    assert [r.resumed for r in rounds] == [False, False, False, True, False]
    # it first asks for what the lost run asked for after step 2, from the checkpoint's model
    first_tasks = again.sent[:3]
    assert sorted(t.task_id for t in first_tasks) == ["r:3:fit:0", "r:3:fit:1", "r:3:fit:2"]
    for task in first_tasks:
        np.testing.assert_array_equal(task.arrays["w"], checkpoints[2].arrays["w"])


# --- tasks: ids, concurrency, one per node and version -------------------------------------------


def test_task_ids_are_unique_and_a_node_trains_once_per_version() -> None:
    grid = RecordingGrid(lambda ctx: Step(ctx.node_id, seconds=0.001), 4)
    try:
        run(grid, fedbuff_app(8, buffer_size=2), run_id="r")
    finally:
        grid.close()
    ids = [t.task_id for t in grid.sent]
    assert len(ids) == len(set(ids))
    for task in grid.sent:
        assert task.task_id == f"r:{task.round}:fit:{task.node_id}"
    for node in range(4):
        rounds = [t.round for t in grid.sent if t.node_id == node]
        assert rounds == sorted(set(rounds))


def test_no_more_than_concurrency_nodes_train_at_once() -> None:
    grid = GatedGrid(6, lambda node: Step(node, seconds=0.005), gated=False)
    run(grid, fedbuff_app(6, buffer_size=2, concurrency=2))
    assert grid.most_in_flight == 2
    assert len({t.node_id for t in grid.sent}) > 2  # drawn from all the idle nodes, not 2


def test_a_fleet_smaller_than_k_steps_with_every_node() -> None:
    result = run_simulation(fedbuff_app(3, buffer_size=10), lambda ctx: Step(ctx.node_id), 3)
    assert [r.replies for r in result.history.rounds[1:]] == [3, 3, 3]


# --- failures ------------------------------------------------------------------------------------


class FailsOn(Step):
    def __init__(self, node: int, failing: Callable[[int, int], bool]) -> None:
        super().__init__(node)
        self.failing = failing

    def fit(self, arrays, config):
        if self.failing(self.node, int(config["round"])):
            raise ValueError(f"node {self.node} cannot train")
        return super().fit(arrays, config)


def app_with_rounds(rounds: int, **strategy: object) -> ServerApp:
    return fedbuff_app(rounds, on_fit_config_fn=lambda rnd: {"round": rnd}, **strategy)


def test_a_failed_task_is_recorded_and_its_node_trains_again_from_the_next_version() -> None:
    grid = RecordingGrid(
        lambda ctx: FailsOn(ctx.node_id, lambda node, rnd: node == 1 and rnd == 1), 3
    )
    try:
        result = run(grid, app_with_rounds(4, buffer_size=2), run_id="r")
    finally:
        grid.close()
    failed = [f for r in result.history.rounds for f in r.failed]
    assert [(f.node_id, f.stage) for f in failed] == [(1, "fit")]
    assert "ValueError: node 1 cannot train" in failed[0].reason
    assert any(t.node_id == 1 and t.round > 1 for t in grid.sent)


def test_when_every_task_fails_the_steps_keep_the_model_and_the_run_ends() -> None:
    grid = SimulationGrid(lambda ctx: FailsOn(ctx.node_id, lambda node, rnd: True), 3)
    server_app = app_with_rounds(3, buffer_size=2)
    server_app.max_failed_rounds = None  # that rule stops runs: tests/loop/test_failed_rounds.py
    try:
        result = run(grid, server_app)
    finally:
        grid.close()
    steps = result.history.rounds[1:]
    assert [(r.replies, r.failures, r.applied) for r in steps] == [(0, 3, False)] * 3
    np.testing.assert_array_equal(result.arrays["w"], start()["w"])


def test_a_task_without_a_reply_by_round_timeout_fails_and_the_run_goes_on() -> None:
    grid = GatedGrid(3, lambda node: Step(node, seconds=0.02), gated=False)
    grid.held = {"r:1:fit:0"}  # node 0 never answers its first task
    events = Recorder()
    result = run(grid, fedbuff_app(30, timeout=0.3, buffer_size=2), run_id="r", on_event=events)
    failed = [f for r in result.history.rounds for f in r.failed]
    assert [f.node_id for f in failed] == [0]
    assert "no reply within round_timeout=0.3s" in failed[0].reason
    # it got a new task, and its update counted
    assert any(t.node_id == 0 and t.round > 1 for t in grid.sent)
    assert any(isinstance(e, ReplyReceived) and e.ok and e.node_id == 0 for _, e in events.events)


def test_an_update_that_fails_validation_is_rejected_against_its_own_version() -> None:
    class Broken(Step):
        def fit(self, arrays, config):
            out, n, metrics = super().fit(arrays, config)
            if self.node == 2:
                return Arrays({"w": np.full(2, np.nan)}), n, metrics
            return out, n, metrics

    grid = SimulationGrid(lambda ctx: Broken(ctx.node_id), 3)
    try:
        result = run(grid, fedbuff_app(3, buffer_size=2))
    finally:
        grid.close()
    rejected = [f for r in result.history.rounds for f in r.failed]
    assert rejected and all(f.node_id == 2 and "non-finite" in f.reason for f in rejected)
    assert sum(r.rejected for r in result.history.rounds) == len(rejected)
    assert np.isfinite(result.arrays["w"]).all()


def test_a_node_claiming_2_62_examples_with_a_boosted_update_is_bounded_by_recent_ones() -> None:
    fits_of_node_2 = itertools.count()

    class Boosted(Step):
        def fit(self, arrays, config):
            out, n, metrics = super().fit(arrays, config)
            # honest once (the run's first updates have nothing to be bounded against)
            if self.node == 2 and next(fits_of_node_2) >= 1:
                return Arrays({"w": arrays["w"] - 1000.0}), 2**62, metrics
            return out, n, metrics

    grid = SimulationGrid(lambda ctx: Boosted(ctx.node_id), 3)
    events = Recorder()
    try:
        result = run(grid, fedbuff_app(6, buffer_size=2), on_event=events)
    finally:
        grid.close()
    bounded = [e for _, e in events.events if isinstance(e, ReplyBounded)]
    assert bounded and all(e.node_id == 2 for e in bounded)
    # unbounded, each such update would take the model about 1000 down: bounded, a few
    # honest steps' worth at most
    assert (result.arrays["w"] > -300).all()


def test_too_few_nodes_after_node_wait_is_a_run_error_with_a_hint() -> None:
    grid = GatedGrid(1, Step, gated=False)
    app = fedbuff_app(2)
    app.node_wait = 0.2
    with pytest.raises(RunError, match="needs 2 clients but only 1"):
        run(grid, app)


def test_with_too_few_nodes_a_buffered_run_waits_for_them() -> None:
    grid = GatedGrid(1, Step, gated=False)
    threading.Timer(0.5, lambda: setattr(grid, "num_nodes", 3)).start()  # two more come
    result = run(grid, fedbuff_app(2, buffer_size=2))
    assert [r.replies for r in result.history.rounds[1:]] == [2, 2]


def test_an_error_of_the_grid_ends_the_run() -> None:
    class Broken(GatedGrid):
        def dispatch(self, instructions, timeout):  # type: ignore[no-untyped-def]
            raise RuntimeError("the grid broke")

    with pytest.raises(RuntimeError, match="the grid broke"):
        run(Broken(3, Step), fedbuff_app(2))


def test_a_reply_to_another_task_is_dropped() -> None:
    class Confused(GatedGrid):
        def dispatch(self, instructions, timeout):  # type: ignore[no-untyped-def]
            [task] = instructions
            yield Message("fit", task_id="someone-else", is_reply=True, node_id=task.node_id)
            yield from super().dispatch(instructions, timeout)

    result = run(Confused(3, Step, gated=False), fedbuff_app(2, buffer_size=2))
    assert [(r.replies, r.failures) for r in result.history.rounds[1:]] == [(2, 0), (2, 0)]


def test_task_ids_name_run_round_stage_and_node() -> None:
    grid = GatedGrid(2, Step, gated=False)
    run(grid, fedbuff_app(1, buffer_size=2), run_id="abc")
    assert all(re.fullmatch(r"abc:1:fit:[01]", t.task_id) for t in grid.sent)
