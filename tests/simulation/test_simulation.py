"""The simulation engine: on-demand virtual clients on a bounded thread pool."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from pollinate import Arrays, Client, FedAvg, ServerApp, SimulationGrid, run_simulation
from pollinate.loop.history import WALL_TIMES
from pollinate.records import Message
from pollinate.strategy import Sampling


def _app(rounds: int = 2, **strategy: object) -> ServerApp:
    return ServerApp(
        FedAvg(**strategy),  # type: ignore[arg-type]
        num_rounds=rounds,
        initial_arrays=Arrays({"w": np.zeros(100, np.float32)}),
    )


class Step(Client):
    """Moves the weights towards its partition id; evaluation reports the distance."""

    def __init__(self, partition: int) -> None:
        self.partition = partition

    def fit(self, arrays, config):
        return Arrays({"w": arrays["w"] + 0.1 * (self.partition - arrays["w"])}), 1, {}

    def evaluate(self, arrays, config):
        return float(np.abs(arrays["w"] - self.partition).mean()), 1, {}


def test_a_thousand_virtual_clients_are_routine() -> None:
    result = run_simulation(
        _app(sampling=Sampling(fraction_evaluate=0.1)),
        lambda ctx: Step(ctx.partition_id),
        num_clients=1000,
    )
    record = result.history.rounds[-1]
    assert (record.replies, record.failures) == (1000, 0)
    # mean of 0.1 * partition over partitions 0..999 after one round is 49.95
    assert result.history.rounds[-1].evaluate["loss"] > 0
    assert np.allclose(result.arrays["w"], 49.95 + 0.1 * (499.5 - 49.95), rtol=1e-5)


class Counted(Step):
    alive = 0
    peak = 0
    lock = threading.Lock()

    def __init__(self, partition: int) -> None:
        super().__init__(partition)
        with Counted.lock:
            Counted.alive += 1
            Counted.peak = max(Counted.peak, Counted.alive)

    def __del__(self) -> None:
        with Counted.lock:
            Counted.alive -= 1


def test_clients_exist_only_while_they_work_so_memory_follows_concurrency() -> None:
    Counted.alive = Counted.peak = 0
    run_simulation(_app(), lambda ctx: Counted(ctx.partition_id), num_clients=500, concurrency=2)
    assert Counted.peak <= 2
    assert Counted.alive == 0


def test_a_client_that_raises_fails_alone() -> None:
    class Flaky(Step):
        def fit(self, arrays, config):
            if self.partition % 10 == 3:
                raise RuntimeError("disk full")
            return super().fit(arrays, config)

    result = run_simulation(_app(), lambda ctx: Flaky(ctx.partition_id), num_clients=50)
    record = result.history.rounds[1]
    assert (record.replies, record.failures) == (45, 5)
    assert {f.node_id for f in record.failed} == {3, 13, 23, 33, 43}
    assert "RuntimeError: disk full" in record.failed[0].reason


def test_nan_or_misshapen_updates_are_skipped_and_the_run_goes_on() -> None:
    class Broken(Step):
        def fit(self, arrays, config):
            if self.partition == 0:
                return Arrays({"w": np.full(100, np.nan, np.float32)}), 1, {}
            if self.partition == 1:
                return Arrays({"w": np.zeros(7, np.float32)}), 1, {}
            return super().fit(arrays, config)

    result = run_simulation(_app(), lambda ctx: Broken(ctx.partition_id), num_clients=6)
    reasons = sorted(f.reason for f in result.history.rounds[1].failed)
    assert "non-finite" in reasons[0] or "non-finite" in reasons[1]
    assert any("expected float32[100]" in r for r in reasons)
    assert np.isfinite(result.arrays["w"]).all()


def test_a_client_training_in_place_cannot_change_the_global_model() -> None:
    class InPlace(Client):
        def fit(self, arrays, config):
            np.add(arrays["w"], 1.0, out=arrays["w"])
            return arrays, 1, {}

    initial = np.zeros(100, np.float32)
    app = ServerApp(
        FedAvg(sampling=Sampling(fraction_evaluate=0)), 1, initial_arrays=Arrays({"w": initial})
    )
    result = run_simulation(app, lambda ctx: InPlace(), num_clients=8)
    assert result.arrays["w"].tolist() == [1.0] * 100
    assert initial.tolist() == [0.0] * 100


def test_same_seed_same_history() -> None:
    def history(seed: int) -> list[dict]:
        result = run_simulation(
            _app(rounds=3, sampling=Sampling(fraction_fit=0.3)),
            lambda ctx: Step(ctx.partition_id),
            num_clients=40,
            seed=seed,
            concurrency=4,
        )
        return [{**r.to_dict(), **dict.fromkeys(WALL_TIMES, 0)} for r in result.history.rounds]

    assert history(1) == history(1)
    assert history(1) != history(2)


def test_replies_past_the_deadline_count_as_failures() -> None:
    release = threading.Event()

    class Hangs(Step):
        def fit(self, arrays, config):
            if self.partition == 0:
                release.wait(30)
            return super().fit(arrays, config)

    app = _app(rounds=1, sampling=Sampling(fraction_evaluate=0))
    app.round_timeout = 2.0
    grid = SimulationGrid(lambda ctx: Hangs(ctx.partition_id), 4, concurrency=4)
    try:
        from pollinate.loop import run

        result = run(grid, app)
    finally:
        release.set()
        grid.close()
    record = result.history.rounds[1]
    assert (record.replies, record.failures) == (3, 1)
    assert "no reply within round_timeout=2.0s" in record.failed[0].reason


def test_grid_rejects_a_nonsense_client_count() -> None:
    with pytest.raises(ValueError, match="num_clients must be an int >= 1, got 0"):
        SimulationGrid(lambda ctx: Step(0), 0)


def test_context_carries_partition_node_and_configs() -> None:
    seen: list[tuple[int, int, int, dict, dict]] = []

    def client_fn(ctx):
        seen.append(
            (ctx.node_id, ctx.partition_id, ctx.num_partitions, ctx.node_config, ctx.run_config)
        )
        return Step(ctx.partition_id)

    grid = SimulationGrid(
        client_fn, 3, run_config={"lr": 0.1}, node_config_fn=lambda p: {"site": f"s{p}"}
    )
    replies = list(
        grid.dispatch(
            [Message("fit", task_id="t", node_id=2, arrays=Arrays({"w": np.zeros(2)}))], None
        )
    )
    grid.close()
    assert replies[0].error is None
    node_config = {"partition-id": 2, "num-partitions": 3, "site": "s2"}  # as Flower sets them
    assert seen == [(2, 2, 3, node_config, {"lr": 0.1})]
