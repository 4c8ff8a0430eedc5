"""Simulated stragglers (simulation/speed.py) and how SimulationGrid plays them.

A slow client's reply is held back for ``(slowdown - 1) x`` its real time, without holding a
worker thread; the grid still keeps its contract, and takes dispatch calls from several
threads at once (the asynchronous loop makes one per task).
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import numpy as np
import pytest

import pollinate
from pollinate import Arrays, Client, Grid, SimulationGrid
from pollinate.client import ClientFn
from pollinate.simulation import Adversaries, Stragglers
from pollinate.simulation.speed import slowdowns
from pollinate.strategy import Sampling
from tests.loop.grid_contract import GridContract, fit_task


class Sleeper(Client):
    """Sleeps ``seconds`` in fit and notes when it started."""

    def __init__(self, node: int, seconds: float, starts: dict[int, float]) -> None:
        self.node, self.seconds, self.starts = node, seconds, starts

    def fit(self, arrays, config):
        self.starts[self.node] = time.monotonic()
        time.sleep(self.seconds)
        return arrays, 1, {}


def sleepers(seconds: float, starts: dict[int, float] | None = None) -> ClientFn:
    noted = {} if starts is None else starts
    return lambda ctx: Sleeper(ctx.node_id, seconds, noted)


# --- who is slow -------------------------------------------------------------------------------


def test_stragglers_are_a_seeded_fraction_of_the_clients() -> None:
    stragglers = Stragglers(0.2, slowdown=10.0, seed=3)
    assert len(stragglers.clients(20)) == 4
    assert stragglers.clients(20) == Stragglers(0.2, seed=3).clients(20)
    assert len(Stragglers(0.25).clients(10)) == 3  # 2.5 rounds half up
    factors = slowdowns(stragglers, 20)
    assert sorted(factors) == [1.0] * 16 + [10.0] * 4
    assert {n for n, f in enumerate(factors) if f > 1} == stragglers.clients(20)


def test_stragglers_are_drawn_apart_from_adversaries_of_the_same_seed() -> None:
    attackers = Adversaries(0.2, "sign-flip", seed=0).clients(20)
    assert Stragglers(0.2, seed=0).clients(20) != attackers


def test_a_function_gives_each_client_its_slowdown() -> None:
    assert slowdowns(lambda node: 1.0 + node, 3) == [1.0, 2.0, 3.0]


@pytest.mark.parametrize(
    ("speed", "error", "match"),
    [
        (lambda node: 0.5, ValueError, r"client_speed\(0\) must be a finite number >= 1"),
        (lambda node: float("nan"), ValueError, "finite"),
        (lambda node: "fast", TypeError, "must be a finite number >= 1, got 'fast'"),
        (10.0, TypeError, "Hint: client_speed=Stragglers"),
    ],
)
def test_a_bad_speed_is_refused_with_what_to_pass(speed: object, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        slowdowns(speed, 3)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"fraction": 1.5}, "fraction must be a finite number in"),
        ({"fraction": 0.2, "slowdown": 0.5}, "slowdown must be a finite number >= 1"),
        ({"fraction": 0.2, "seed": -1}, "seed"),
    ],
)
def test_bad_stragglers_are_refused(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Stragglers(**kwargs)  # type: ignore[arg-type]


# --- how the grid plays them -------------------------------------------------------------------


def test_a_slow_clients_task_takes_slowdown_times_its_real_time() -> None:
    grid = SimulationGrid(sleepers(0.05), 2, client_speed=lambda node: 6.0 if node == 0 else 1.0)
    try:
        started = time.monotonic()
        list(grid.dispatch([fit_task(1)], timeout=10))
        fast = time.monotonic() - started
        started = time.monotonic()
        list(grid.dispatch([fit_task(0)], timeout=10))
        slow = time.monotonic() - started
    finally:
        grid.close()
    assert fast < 0.2 and 0.3 <= slow < 1.0  # 6 x 0.05 s


def test_a_held_back_reply_holds_no_worker_and_fast_replies_come_first() -> None:
    starts: dict[int, float] = {}
    grid = SimulationGrid(
        sleepers(0.02, starts), 4, concurrency=1, client_speed=lambda n: 50.0 if n == 0 else 1.0
    )
    arrived: list[tuple[int, float]] = []
    lock = threading.Lock()

    def one(node: int) -> None:
        for reply in grid.dispatch([fit_task(node)], timeout=10):
            with lock:
                arrived.append((reply.node_id, time.monotonic()))

    try:
        threads = [threading.Thread(target=one, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
            time.sleep(0.005)  # node 0's task reaches the single worker first
        for thread in threads:
            thread.join(10)
    finally:
        grid.close()
    # the one worker went on with nodes 1-3 as soon as node 0 had worked its 0.02 s
    assert max(starts[n] for n in (1, 2, 3)) - starts[0] < 0.5
    assert [node for node, _ in arrived][-1] == 0 and len(arrived) == 4
    assert arrived[-1][1] - starts[0] >= 0.9  # 50 x 0.02 s


def test_a_straggler_past_the_deadline_is_abandoned_at_the_deadline() -> None:
    grid = SimulationGrid(sleepers(0.02), 3, client_speed=lambda n: 200.0 if n == 0 else 1.0)
    try:
        started = time.monotonic()
        replies = list(grid.dispatch([fit_task(n) for n in range(3)], timeout=0.5))
        took = time.monotonic() - started
    finally:
        grid.close()
    assert sorted(r.node_id for r in replies) == [1, 2]
    assert 0.5 <= took < 2.0


def test_replies_still_come_in_instruction_order() -> None:
    grid = SimulationGrid(sleepers(0.01), 4, client_speed=lambda n: 20.0 if n == 1 else 1.0)
    try:
        replies = list(grid.dispatch([fit_task(n) for n in range(4)], timeout=10))
    finally:
        grid.close()
    assert [r.node_id for r in replies] == [0, 1, 2, 3]


def test_close_ends_a_dispatch_that_waits_for_a_straggler() -> None:
    grid = SimulationGrid(sleepers(0.02), 1, client_speed=lambda n: 1000.0)  # 20 s
    done = threading.Event()
    out: list[object] = []

    def wait() -> None:
        out.extend(grid.dispatch([fit_task(0)], timeout=None))
        done.set()

    threading.Thread(target=wait, daemon=True).start()
    time.sleep(0.2)
    grid.close()
    assert done.wait(2.0) and out == []


def test_dispatch_calls_from_many_threads_each_get_their_own_replies() -> None:
    grid = SimulationGrid(lambda ctx: Doubling(), 8, concurrency=2)
    results: dict[int, list[str]] = {}

    def call(caller: int) -> None:
        tasks = [
            replace(fit_task(n), task_id=f"c{caller}-{n}") for n in range(8) if n % 4 == caller
        ]
        results[caller] = sorted(r.task_id for r in grid.dispatch(tasks, timeout=10))

    try:
        threads = [threading.Thread(target=call, args=(c,)) for c in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
    finally:
        grid.close()
    assert results == {c: sorted(f"c{c}-{n}" for n in range(8) if n % 4 == c) for c in range(4)}


class Doubling(Client):
    def fit(self, arrays, config):
        return Arrays({k: v * 2 for k, v in arrays.items()}), 1, {}


class TestSimulationGridWithStragglers(GridContract):
    def make_grid(self, client_fn: ClientFn, num_nodes: int) -> Grid:
        return SimulationGrid(
            client_fn, num_nodes, concurrency=2, client_speed=Stragglers(0.4, slowdown=3.0)
        )


def test_run_simulation_passes_the_speeds_to_its_grid() -> None:
    app = pollinate.ServerApp(
        pollinate.FedAvg(sampling=Sampling(fraction_evaluate=0.0)),
        num_rounds=1,
        initial_arrays=Arrays({"w": np.zeros(2)}),
    )
    result = pollinate.run_simulation(
        app, sleepers(0.02), num_clients=3, client_speed=lambda n: 25.0 if n == 2 else 1.0
    )
    assert result.history.rounds[1].seconds >= 0.45  # the round waited 25 x 0.02 s
