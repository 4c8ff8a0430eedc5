"""A Ray worker's side of a summed stage (``WorkerBatch``), without Ray: what it sends back,
and how it stops at the deadline even inside a hung client."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import numpy as np

from pollinate import Arrays, Client, Validation
from pollinate.aggregate import PartialSum
from pollinate.loop.summing import Summing
from pollinate.records import Message
from pollinate.simulation import SimulationGrid
from pollinate.simulation.ray_sums import WorkerBatch, decode_sum, encode_sum
from pollinate.strategy.base import ExamplesMean
from pollinate.wire import decode, encode
from tests.loop.grid_contract import fit_task

SUMMING = Summing(
    Validation(anomaly_threshold=None, norm_multiple=None, examples_multiple=None), ExamplesMean()
)
RELEASE = threading.Event()


class Client3(Client):
    """Node 1 raises, node 2 sends NaN, node 3 hangs until RELEASE; the rest add 1."""

    def __init__(self, node: int) -> None:
        self.node = node

    def fit(self, arrays, config):
        if self.node == 1:
            raise ValueError("no data")
        if self.node == 3:
            RELEASE.wait(30)
        w = np.full_like(arrays["w"], np.nan) if self.node == 2 else arrays["w"] + 1
        return Arrays({"w": w}), self.node + 1, {}


def _batch(nodes: list[int]) -> tuple[list[bytes], bytes]:
    tasks = [fit_task(n) for n in nodes]
    heads = [encode(replace(t, arrays=Arrays())) for t in tasks]
    return heads, encode(Message("fit", arrays=tasks[0].arrays))


def _run(batch: WorkerBatch, key: str, nodes: list[int]) -> tuple[list[Message], list, object]:
    heads, body = _batch(nodes)
    facts: list = []
    last = None
    for kind, data, busy in batch.fold(key, heads, body, SUMMING):
        if kind == "facts":
            facts += data
        else:
            last = (decode_sum(data), busy)
    return [decode(head) for head, _ in facts], [reason for _, reason in facts], last


def test_a_batch_sends_each_tasks_facts_then_one_sum_of_the_updates_it_accepted() -> None:
    batch = WorkerBatch(SimulationGrid(lambda ctx: Client3(ctx.node_id), 4))
    replies, reasons, (partial, busy) = _run(batch, "k", [0, 1, 2])
    assert [r.node_id for r in replies] == [0, 1, 2]
    assert all(len(r.arrays) == 0 for r in replies)  # no update travels back on its own
    assert "no data" in (replies[1].error or "") and reasons[1] is None
    assert reasons[0] is None and "non-finite" in (reasons[2] or "")
    assert (partial.count, partial.total_weight) == (1, 1.0)  # node 0 alone, 1 example
    assert partial.sums["w"].dtype == np.float64
    assert partial.sums["w"].tolist() == [1.0, 2.0, 3.0, 4.0]
    assert busy is False


def test_a_stop_that_comes_before_its_batch_runs_nothing() -> None:
    batch = WorkerBatch(SimulationGrid(lambda ctx: Client3(ctx.node_id), 4))
    batch.stop("k")
    replies, _, (partial, busy) = _run(batch, "k", [0, 2])
    assert replies == [] and partial.count == 0 and busy is False


def test_a_stop_ends_a_batch_inside_a_hung_client_which_keeps_the_worker_busy() -> None:
    RELEASE.clear()
    batch = WorkerBatch(SimulationGrid(lambda ctx: Client3(ctx.node_id), 5))
    threading.Timer(0.3, batch.stop, ["k"]).start()
    started = time.monotonic()
    replies, _, (partial, busy) = _run(batch, "k", [0, 3, 4])
    assert time.monotonic() - started < 5
    assert [r.node_id for r in replies] == [0]  # node 4 waited behind node 3: not run
    assert partial.count == 1 and busy is True
    settled = threading.Thread(target=batch.settle)
    settled.start()
    settled.join(0.3)
    assert settled.is_alive()  # the hung client still holds the worker
    RELEASE.set()
    settled.join(5)
    assert not settled.is_alive()


def test_a_sums_tallies_cross_with_it() -> None:
    """DP-FedAvg's count of changes within the bound travels beside its sums."""
    partial = PartialSum(Arrays({"w": np.arange(3.0)}), 2.0, 2, {"dp/within_bound": 1})
    back = decode_sum(encode_sum(partial))
    assert back.tallies == {"dp/within_bound": 1} and back.count == 2
    assert np.array_equal(back.sums["w"], partial.sums["w"])
