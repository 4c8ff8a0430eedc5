"""How ``RayGrid.dispatch`` hands tasks to its workers, against a stand-in for Ray.

Which worker is busy when, and for how long, cannot be arranged on a real cluster; here each
worker's task ends at a time the test chooses (``Ray`` below answers ``wait`` from those
times), while the grid's own bookkeeping (``_Workers``, the window, ``placement``) is the real
one. tests/simulation/test_ray.py runs the same code on a real two-node Ray cluster.
"""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

from pollinate.records import Message
from pollinate.simulation.ray_engine import RayGrid, _Workers
from pollinate.wire import decode, encode


class Ref:
    """A task's result, there from ``ends`` (time.monotonic()) on."""

    def __init__(self, ends: float, value: Any) -> None:
        self.ends, self.value = ends, value

    def done(self) -> bool:
        return time.monotonic() >= self.ends


class Ray:
    """``wait``, ``get``, ``put`` and ``cancel`` over ``Ref``s; counts the waits."""

    exceptions = SimpleNamespace(RayActorError=RuntimeError)

    def __init__(self) -> None:
        self.waits = 0

    def put(self, value: Any) -> Ref:
        return Ref(0.0, value)

    def get(self, ref: Ref) -> Any:
        return ref.value

    def cancel(self, ref: Ref) -> None:
        pass

    def wait(
        self, refs: list[Ref], num_returns: int = 1, timeout: float | None = None
    ) -> tuple[list[Ref], list[Ref]]:
        self.waits += 1
        until = None if timeout is None else time.monotonic() + timeout
        while True:
            done = [r for r in refs if r.done()]
            now = time.monotonic()
            if len(done) >= num_returns or (until is not None and now >= until):
                return done, [r for r in refs if r not in done]
            next_end = min(r.ends for r in refs if not r.done())
            time.sleep(max(0.0, min(next_end, until or next_end) - now))


def grid(workers: int, seconds: dict[int, float]) -> tuple[RayGrid, Ray, list[tuple[int, int]]]:
    """A RayGrid of ``workers`` stand-in actors: node n's task takes ``seconds[n]`` (10 ms
    unless given); the log says which node went to which worker, in the order sent."""
    ray, sent = Ray(), []

    def actor(index: int) -> Any:
        def answer(head: bytes, body: Any) -> Ref:
            task = decode(head)
            sent.append((task.node_id, index))
            reply = encode(task.reply(error=f"done by {index}"))
            return Ref(time.monotonic() + seconds.get(task.node_id, 0.01), (reply, 0.0))

        return SimpleNamespace(answer=SimpleNamespace(remote=answer))

    made = object.__new__(RayGrid)
    made._ray, made._closed = ray, False
    made._workers = _Workers(ray, [actor(i) for i in range(workers)])
    return made, ray, sent


def tasks(kind: str, nodes: list[int]) -> list[Message]:
    return [Message(kind, task_id=f"t{n}", run_id="r", round=1, node_id=n) for n in nodes]


def test_a_secagg_task_waits_for_its_worker_while_later_clients_go_to_theirs() -> None:
    """Node 0's worker (0) is slow: node 2, also worker 0's, waits for it, while nodes 1
    and 3 go to worker 1 meanwhile; the replies come in instruction order."""
    made, _, sent = grid(2, {0: 0.3})
    replies = list(made.dispatch(tasks("secagg", [0, 2, 1, 3]), timeout=None))
    assert [r.node_id for r in replies] == [0, 2, 1, 3]
    assert sent == [(0, 0), (1, 1), (3, 1), (2, 0)]
    assert all(r.error == f"done by {r.node_id % 2}" for r in replies)


def test_a_slow_first_task_is_waited_for_not_spun_on() -> None:
    """Every worker but the first's is done and replies wait for its slow head: the grid
    sleeps until something ends (a few waits per task), it does not poll."""
    made, ray, _ = grid(2, {0: 0.5})
    replies = list(made.dispatch(tasks("fit", list(range(8))), timeout=None))
    assert [r.node_id for r in replies] == list(range(8))
    assert ray.waits < 20 * 8
