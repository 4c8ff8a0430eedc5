"""Summed fit stages on the Ray engine: each worker's share in one call, one sum back.

``RayGrid.dispatch_summed`` (``loop/summing.py`` says when a round asks for it) pushes each
idle worker its share of the stage's fit tasks in one actor call, as Pollen does (Sani et al.
2024): one call per worker per round instead of one per task hides Ray's ~3 ms round trip
per call (benchmarks/README.md, "Engines"). The worker (``WorkerBatch``) runs the tasks one
after another, screens each reply as the hub would and folds the updates it accepts into one
float64 partial sum, as the round's aggregator folds them (``loop.summing.WorkerSum``). It
streams back, as a Ray generator, the small facts of the tasks that ended (a reply's header
as wire bytes, and the screen's reason for a rejected update), a few at a time, then its
``PartialSum`` as one wire message: float64 sums, the total weight, the count and its
tallies (DP-FedAvg's count of changes within the bound).

Deadlines: the driver keeps the stage's clock, counting each task as its facts arrive
(``seen``). When the deadline passes it tells every worker still running to stop
(``WorkerBatch.stop``, which the actor takes while it runs a batch: it has two threads); a
worker stops at once, even inside a hung client, whose thread it leaves running, and sends
the sum of what was answered by then. Tasks without facts are the round's timeouts.

Invariants:
- a task's facts are yielded only after the sum its update is in, so a round never counts an
  update its aggregate lacks; a worker that dies fails its whole share (its sum is lost);
- facts are yielded in the order of the instructions (the history is the in-process one);
- a task counts until its end is seen: a worker that left a hung client running stays busy
  (``settle``) until that client returns, and gets no task meanwhile.

A batch's tasks run in turn, so a task placed behind a hung client on the same worker waits
for it, and is a timeout if the client outlasts the deadline (in-process, another thread
would take it). Grids with slow clients (``client_speed``) keep the per-reply path, whose
held-back replies a sum made on the worker cannot wait for.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from pollinate.aggregate.mean import PartialSum
from pollinate.loop.grid import Timeout, ends_at
from pollinate.loop.summing import Answered, Seen, Summing, WorkerSum
from pollinate.records import Arrays, Message, MessageKind, Metrics
from pollinate.simulation.grid import SimulationGrid
from pollinate.wire import decode, encode

PROGRESS_SECONDS = 0.02  # a worker sends the facts of ended tasks at most this often
STOP_GRACE = 10.0  # seconds a stopped worker has to send its sum before its share is lost

_TALLY = "tally/"  # a PartialSum's tallies among its wire message's metrics

Facts = tuple[bytes, "str | None"]
"""A task's facts as they cross: its reply's header (wire bytes), the screen's reason."""


class Workers(Protocol):
    """The driver's view of its Ray actors (``ray_engine._Workers``)."""

    actors: list[Any]

    def all_idle(self) -> list[int]: ...
    def hold(self, worker: int, ref: Any) -> None: ...
    def wait_idle(self, timeout: float | None) -> None: ...


# --- the worker's side --------------------------------------------------------------------


class WorkerBatch:
    """A worker's summed batches: runs tasks on a thread of their own (a hung client can be
    left behind at a stop), screens and sums their updates."""

    def __init__(self, grid: SimulationGrid) -> None:
        self._grid = grid
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="pollinate-batch")
        self._running: Future[tuple[Message, float]] | None = None
        self._stops: dict[str, threading.Event] = {}
        self._stopped: deque[str] = deque(maxlen=64)  # stops that came before their batch
        self._lock = threading.Lock()

    def fold(
        self, key: str, heads: list[bytes], body: bytes, summing: Summing
    ) -> Iterator[tuple[str, Any, Any]]:
        """Run the tasks ``heads`` on the arrays of ``body``: ``("facts", [Facts, ...])``
        now and then, then ``("sum", wire bytes, still busy)``."""
        stop = self._start(key)
        current = decode(body).arrays
        total = WorkerSum(current, summing)
        facts: list[Facts] = []
        sent = time.monotonic()
        try:
            for head in heads:
                reply = self._run(replace(decode(head), arrays=current), stop)
                if reply is None:
                    break
                # screened as the hub screens what it decodes (little-endian, checked)
                answered = total.take(decode(encode(reply)))
                facts.append((encode(answered.reply), answered.rejected))
                if time.monotonic() - sent >= PROGRESS_SECONDS:
                    yield "facts", facts, None
                    facts, sent = [], time.monotonic()
            if facts:
                yield "facts", facts, None
            yield "sum", encode_sum(total.partial()), self._busy()
        finally:
            with self._lock:
                self._stops.pop(key, None)

    def stop(self, key: str) -> None:
        with self._lock:
            self._stopped.append(key)
            if key in self._stops:
                self._stops[key].set()

    def settle(self) -> None:
        """Return once the task left running at a stop has ended."""
        running = self._running
        if running is not None:
            running.exception()

    def _start(self, key: str) -> threading.Event:
        stop = threading.Event()
        with self._lock:
            self._stops[key] = stop
            if key in self._stopped:
                stop.set()
        return stop

    def _run(self, instruction: Message, stop: threading.Event) -> Message | None:
        """The reply to ``instruction``, or None when told to stop first."""
        if stop.is_set():
            return None
        ended = threading.Event()
        running = self._thread.submit(self._grid.answer, instruction)
        self._running = running
        running.add_done_callback(lambda _: ended.set())
        while not ended.wait(0.05):  # a stop is seen within 50 ms
            if stop.is_set():
                return None
        return running.result()[0]

    def _busy(self) -> bool:
        return self._running is not None and not self._running.done()


def encode_sum(partial: PartialSum) -> bytes:
    metrics: Metrics = {"total_weight": partial.total_weight, "count": partial.count}
    metrics.update({_TALLY + name: count for name, count in partial.tallies.items()})
    return encode(Message(MessageKind.FIT, arrays=partial.sums, metrics=metrics))


def decode_sum(data: bytes) -> PartialSum:
    message = decode(data)
    weight, count = message.metrics["total_weight"], message.metrics["count"]
    tallies = {
        name[len(_TALLY) :]: int(value)
        for name, value in message.metrics.items()
        if name.startswith(_TALLY)
    }
    return PartialSum(message.arrays, float(weight), int(count), tallies)


# --- the driver's side --------------------------------------------------------------------


@dataclass
class _Batch:
    """One worker's share of a stage: where its tasks stand."""

    worker: int
    tasks: list[tuple[int, Message]]  # (index in the stage, instruction)
    stream: Any = None  # the Ray generator of its facts and sum
    facts: list[Answered] = field(default_factory=list)
    ended: bool = False


def dispatch_summed(
    ray: Any,
    workers: Workers,
    instructions: Sequence[Message],
    timeout: Timeout,
    summing: Summing,
    seen: Seen,
) -> Iterator[Answered | PartialSum]:
    """``Grid.dispatch_summed`` on Ray (see the module docstring)."""
    ends = ends_at(timeout)
    if any(task.arrays is not instructions[0].arrays for task in instructions):
        raise ValueError(
            "a summed stage's tasks must share one Arrays, the round's global model: the "
            "workers screen every update against it\nHint: send them through dispatch()"
        )
    idle = _idle_workers(workers, ends)
    if not instructions or not idle:
        return
    key = uuid.uuid4().hex
    batches = _send(ray, workers, key, _shares(instructions, idle), summing)
    results: dict[int, Answered | None] = {}
    order = _InOrder(len(instructions), results)
    stopping = None  # once the deadline passed: until when stopped workers may send
    try:
        while any(not b.ended for b in batches):
            now = time.monotonic()
            if stopping is None and _passed(ends(), now):
                stopping = now + STOP_GRACE
                _stop(workers, key, batches)
            if stopping is not None and now >= stopping:
                break  # the workers that did not answer the stop lose their share
            streams = {b.stream: b for b in batches if not b.ended}
            until = ends() if stopping is None else stopping
            ready, _ = ray.wait(list(streams), num_returns=1, timeout=_left(until, now))
            for stream in ready:
                yield from _take(ray, workers, streams[stream], seen, results)
            yield from order.ready()
        yield from order.rest()
    finally:
        _stop(workers, key, batches)  # abandoned by the caller: no worker goes on for it


def _send(
    ray: Any, workers: Workers, key: str, batches: list[_Batch], summing: Summing
) -> list[_Batch]:
    """Start each batch on its worker: the global arrays put once, each task's header."""
    body = ray.put(encode(Message(MessageKind.FIT, arrays=batches[0].tasks[0][1].arrays)))
    for batch in batches:
        heads = [encode(replace(task, arrays=Arrays())) for _, task in batch.tasks]
        batch.stream = workers.actors[batch.worker].fold.remote(key, heads, body, summing)
        workers.hold(batch.worker, batch.stream.completed())
    return batches


def _stop(workers: Workers, key: str, batches: list[_Batch]) -> None:
    for batch in batches:
        if not batch.ended:
            with contextlib.suppress(Exception):  # its worker gone
                workers.actors[batch.worker].stop.remote(key)


def _passed(deadline: float | None, now: float) -> bool:
    return deadline is not None and now >= deadline


def _idle_workers(workers: Workers, ends: Any) -> list[int]:
    """The workers free now; if none is, the first to be free before the deadline."""
    while True:
        idle = workers.all_idle()
        deadline = ends()
        left = None if deadline is None else deadline - time.monotonic()
        if idle or (left is not None and left <= 0):
            return idle
        workers.wait_idle(left)


def _shares(instructions: Sequence[Message], idle: list[int]) -> list[_Batch]:
    """Each idle worker's share, dealt round-robin in instruction order."""
    batches = [_Batch(worker, []) for worker in idle]
    for index, task in enumerate(instructions):
        batches[index % len(batches)].tasks.append((index, task))
    return [b for b in batches if b.tasks]


def _take(
    ray: Any, workers: Workers, batch: _Batch, seen: Seen, results: dict[int, Answered | None]
) -> Iterator[PartialSum]:
    """Read what ``batch``'s worker sent next: facts (counted as seen) or its sum (then
    its facts are committed to ``results``)."""
    try:
        kind, data, busy = ray.get(next(batch.stream))
    except StopIteration:  # a stream always ends with its sum: a worker that stopped short
        kind, data, busy = "lost", "its batch ended without its sum", False
    except ray.exceptions.RayError as exc:  # its process died (OOM, crash), or a bug
        kind, data, busy = "lost", f"the Ray worker died: {str(exc)[:2000]}", False
    if kind == "facts":
        for head, rejected in data:
            batch.facts.append(Answered(decode(head), rejected))
            seen()
        return
    batch.ended = True
    if kind == "lost":
        batch.facts = [Answered(task.reply(error=data)) for _, task in batch.tasks]
    else:
        _see_end(batch.stream)
        yield decode_sum(data)
    if busy:  # a hung client is still running there: the worker is busy until it ends
        workers.hold(batch.worker, workers.actors[batch.worker].settle.remote())
    answered = dict(zip([i for i, _ in batch.tasks], batch.facts, strict=False))
    for index, _ in batch.tasks:
        results[index] = answered.get(index)


def _see_end(stream: Any) -> None:
    """Wait for the batch's call to return (just after its sum), so that the next stage
    finds its worker idle."""
    with contextlib.suppress(StopIteration, Exception):
        next(stream)


class _InOrder:
    """Yields committed facts in the order of the instructions (None: no facts, a timeout)."""

    def __init__(self, count: int, results: dict[int, Answered | None]) -> None:
        self._count, self._results, self._next = count, results, 0

    def ready(self) -> Iterator[Answered]:
        while self._next in self._results:
            answered = self._results.pop(self._next)
            self._next += 1
            if answered is not None:
                yield answered

    def rest(self) -> Iterator[Answered]:
        """At the end: every fact committed, in order, skipping the tasks without one."""
        for index in range(self._next, self._count):
            answered = self._results.get(index)
            if answered is not None:
                yield answered


def _left(until: float | None, now: float) -> float | None:
    return None if until is None else max(0.0, until - now)
