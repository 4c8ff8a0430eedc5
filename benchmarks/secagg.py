"""What a round with secure aggregation costs, next to the same round without it.

    .venv/bin/python benchmarks/secagg.py                     # 10, 50, 100 clients, 0% and 10%
    .venv/bin/python benchmarks/secagg.py --clients 10 --size 1000 --repeat 1   # a quick look

Each round runs through the real loop and a SimulationGrid with one worker thread, so the
clients' work and the hub's happen one after another and can be told apart:

- per client s: one client's SecAgg work in the round (its four stages, its own training
  excluded), the mean over the clients;
- hub s: the round's wall time minus all clients' work (SecAgg and training): relaying, the
  masked sum, rebuilding seeds from shares and removing masks;
- per client KB down / up and hub MB: every instruction and reply of the round encoded with
  ``pollinate.wire``, as they would travel to and from a deployed hub.

Training is a fixed nudge, so the round is all aggregation. Dropouts fail in their training,
after sharing their keys: the costly case, where the hub rebuilds their pairwise masks.
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from collections.abc import Iterator, Sequence

import numpy as np

import pollinate.simulation.grid as grid_module
from pollinate import Arrays, Client, FedAvg, Sampling, ServerApp, Validation
from pollinate.loop.grid import Grid
from pollinate.loop.run import run
from pollinate.records import Message
from pollinate.secagg import SecAggConfig
from pollinate.secagg.node import SecAggNode
from pollinate.simulation import SimulationGrid
from pollinate.wire import encode

_spent = threading.local()


class TimedNode(SecAggNode):
    """A node that adds its SecAgg work (excluding the app's fit) to a shared tally."""

    tally: dict[int, float] = {}
    training = [0.0]

    def handle(self, instruction, fit):  # type: ignore[no-untyped-def]
        def timed_fit(message: Message) -> Message:
            started = time.perf_counter()
            try:
                return fit(message)
            finally:
                TimedNode.training[0] += time.perf_counter() - started
                _spent.fit = time.perf_counter() - started

        _spent.fit = 0.0
        started = time.perf_counter()
        reply = super().handle(instruction, timed_fit)
        work = time.perf_counter() - started - _spent.fit
        TimedNode.tally[self.node_id] = TimedNode.tally.get(self.node_id, 0.0) + work
        return reply


class Counting(Grid):
    """Counts the bytes of every instruction and reply as the wire would carry them."""

    def __init__(self, inner: Grid) -> None:
        self.inner = inner
        self.down: dict[int, int] = {}
        self.up: dict[int, int] = {}

    def nodes(self) -> list[int]:
        return self.inner.nodes()

    def dispatch(self, instructions: Sequence[Message], timeout: float | None) -> Iterator[Message]:
        for m in instructions:
            self.down[m.node_id] = self.down.get(m.node_id, 0) + len(encode(m))
        for reply in self.inner.dispatch(instructions, timeout):
            self.up[reply.node_id] = self.up.get(reply.node_id, 0) + len(encode(reply))
            yield reply


class Nudge(Client):
    def __init__(self, node: int, drops: bool) -> None:
        self.node, self.drops = node, drops

    def fit(self, arrays: Arrays, config: dict) -> tuple[Arrays, int, dict]:
        if self.drops:
            raise RuntimeError("dropped out")
        return Arrays({"w": arrays["w"] + 0.001 * (self.node % 7)}), 10, {}


def one_round(n: int, size: int, dropout: float, secure: bool) -> dict[str, float]:
    gone = set(range(round(dropout * n)))
    initial = Arrays({"w": np.zeros(size, np.float32)})
    strategy = FedAvg(
        failure_tolerance=0.5, sampling=Sampling(fraction_evaluate=0.0, min_fit_clients=n)
    )
    app = ServerApp(
        strategy,
        num_rounds=1,
        initial_arrays=initial,
        validation=Validation(anomaly_threshold=None),  # secagg cannot screen; alike here
        secure_aggregation=SecAggConfig() if secure else None,
    )
    TimedNode.tally, TimedNode.training = {}, [0.0]
    inner = SimulationGrid(lambda ctx: Nudge(ctx.node_id, ctx.node_id in gone), n, concurrency=1)
    grid = Counting(inner)
    started = time.perf_counter()
    try:
        result = run(grid, app, seed=0)
    finally:
        inner.close()
    wall = time.perf_counter() - started
    record = result.history.rounds[1]
    assert record.applied and record.replies == n - len(gone), record
    clients = sum(TimedNode.tally.values())
    return {
        "round": record.seconds,
        "wall": wall,
        "client": clients / n if secure else float("nan"),
        "hub": record.seconds - clients - TimedNode.training[0] if secure else float("nan"),
        "down": sum(grid.down.values()) / n / 1e3,
        "up": sum(grid.up.values()) / n / 1e3,
        "hub_mb": (sum(grid.down.values()) + sum(grid.up.values())) / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, nargs="*", default=[10, 50, 100])
    parser.add_argument("--size", type=int, default=100_000, help="parameters (float32)")
    parser.add_argument("--dropouts", type=float, nargs="*", default=[0.0, 0.1])
    parser.add_argument("--repeat", type=int, default=3, help="best of this many rounds")
    args = parser.parse_args()
    grid_module.SecAggNode = TimedNode  # type: ignore[misc]
    logging.getLogger("pollinate").setLevel(logging.ERROR)  # the dropouts' warnings
    print(
        f"{'clients':>7} {'dropout':>7} {'mode':>6} {'round s':>8} {'per client s':>12} "
        f"{'hub s':>6} {'client KB down':>14} {'client KB up':>12} {'hub MB':>7}"
    )
    for n in args.clients:
        for dropout in args.dropouts:
            for secure in (False, True):
                runs = [one_round(n, args.size, dropout, secure) for _ in range(args.repeat)]
                best = min(runs, key=lambda r: r["round"])
                mode = "secagg" if secure else "plain"
                print(
                    f"{n:>7} {dropout:>7.0%} {mode:>6} {best['round']:>8.3f} "
                    f"{_show(best['client'], 12, 4)} {_show(best['hub'], 6, 2)} "
                    f"{best['down']:>14.1f} {best['up']:>12.1f} {best['hub_mb']:>7.1f}"
                )


def _show(value: float, width: int, digits: int) -> str:
    return f"{'-':>{width}}" if np.isnan(value) else f"{value:>{width}.{digits}f}"


if __name__ == "__main__":
    main()
