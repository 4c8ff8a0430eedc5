"""The contract every Grid keeps, as a reusable test class.

A Grid implementation's tests subclass ``GridContract`` and provide ``make_grid``; the same
checks then run against simulation, and later against the hub and its nodes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

from pollinate import Arrays, Client, Grid
from pollinate.client import ClientFn
from pollinate.records import Message

MakeGrid = Callable[[ClientFn, int], Grid]


class Doubler(Client):
    def __init__(self, node: int, release: threading.Event | None = None) -> None:
        self.node, self.release = node, release

    def fit(self, arrays, config):
        if config.get("raise_on") == self.node:
            raise ValueError(f"node {self.node} refuses")
        if config.get("hang_on") == self.node and self.release is not None:
            self.release.wait(30)
        return Arrays({k: v * 2 for k, v in arrays.items()}), self.node + 1, {"n": self.node}


def fit_task(node: int, **config: int) -> Message:
    return Message(
        "fit",
        task_id=f"t{node}",
        run_id="r",
        round=1,
        node_id=node,
        arrays=Arrays({"w": np.arange(4, dtype=np.float32)}),
        config=dict(config),
    )


class GridContract:
    """Subclass and implement ``make_grid(client_fn, num_nodes)``."""

    def make_grid(self, client_fn: ClientFn, num_nodes: int) -> Grid:
        raise NotImplementedError

    def test_every_instruction_gets_exactly_one_matching_reply(self) -> None:
        grid = self.make_grid(lambda ctx: Doubler(ctx.node_id), 5)
        try:
            nodes = grid.nodes()
            replies = list(grid.dispatch([fit_task(n) for n in nodes], timeout=60))
        finally:
            grid.close()
        assert sorted(r.task_id for r in replies) == sorted(f"t{n}" for n in nodes)
        for reply in replies:
            assert reply.is_reply and reply.kind == "fit" and reply.error is None
            assert reply.task_id == f"t{reply.node_id}"
            assert reply.num_examples == reply.node_id + 1
            assert reply.arrays["w"].tolist() == [0.0, 2.0, 4.0, 6.0]

    def test_a_client_exception_is_a_reply_error_not_a_grid_error(self) -> None:
        grid = self.make_grid(lambda ctx: Doubler(ctx.node_id), 3)
        try:
            replies = {
                r.node_id: r
                for r in grid.dispatch([fit_task(n, raise_on=1) for n in grid.nodes()], timeout=60)
            }
        finally:
            grid.close()
        assert replies[1].error is not None and "ValueError: node 1 refuses" in replies[1].error
        assert replies[0].error is None and replies[2].error is None

    def test_the_deadline_ends_dispatch_without_the_hung_reply(self) -> None:
        release = threading.Event()
        grid = self.make_grid(lambda ctx: Doubler(ctx.node_id, release), 3)
        try:
            tasks = [fit_task(n, hang_on=0) for n in grid.nodes()]
            replies = list(grid.dispatch(tasks, timeout=2.0))
        finally:
            release.set()
            grid.close()
        assert sorted(r.node_id for r in replies) == [1, 2]

    def test_no_instructions_no_replies(self) -> None:
        grid = self.make_grid(lambda ctx: Doubler(ctx.node_id), 2)
        try:
            assert list(grid.dispatch([], timeout=1.0)) == []
        finally:
            grid.close()
