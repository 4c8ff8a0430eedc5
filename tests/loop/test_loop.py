"""The run loop, driven through a scripted Grid that injects faults.

Each test names the invariant it checks (see loop/run.py's docstring).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import pytest

from pollinate import Arrays, Client, FedAvg, RunError, ServerApp
from pollinate.client import Context, handle
from pollinate.loop import Grid, ReplyReceived, RoundFinished, StageStarted, run
from pollinate.loop.grid import Timeout
from pollinate.records import Message
from pollinate.strategy import Sampling

Fault = Callable[[Message, Message], list[Message]]


class AddOne(Client):
    """Adds 1 to every weight; reports its node id as a metric."""

    def __init__(self, node: int) -> None:
        self.node = node

    def fit(self, arrays, config):
        return Arrays({k: v + 1 for k, v in arrays.items()}), 10, {"node": float(self.node)}

    def evaluate(self, arrays, config):
        return float(arrays["w"][0]), 5, {"acc": 0.5}


class ScriptedGrid(Grid):
    """Answers each instruction at once; ``faults[node]`` may rewrite the reply list."""

    def __init__(self, num_nodes: int, faults: dict[int, Fault] | None = None) -> None:
        self.num_nodes = num_nodes
        self.faults = faults or {}
        self.sent: list[Message] = []

    def nodes(self) -> list[int]:
        return list(range(self.num_nodes))

    def dispatch(self, instructions: Sequence[Message], timeout: Timeout) -> Iterator[Message]:
        for task in instructions:
            self.sent.append(task)
            reply = handle(lambda ctx: AddOne(ctx.node_id), _context(task.node_id), task)
            fault = self.faults.get(task.node_id)
            yield from fault(task, reply) if fault else [reply]


def _context(node: int) -> Context:
    return Context(node_id=node, partition_id=node, num_partitions=4)


def _app(rounds: int = 1, **strategy: object) -> ServerApp:
    return ServerApp(
        FedAvg(**strategy),  # type: ignore[arg-type]
        num_rounds=rounds,
        initial_arrays=Arrays({"w": np.zeros(3, np.float32)}),
    )


def test_rounds_apply_the_weighted_mean_and_record_history() -> None:
    result = run(ScriptedGrid(4), _app(rounds=3))
    assert result.arrays["w"].tolist() == [3.0, 3.0, 3.0]
    assert result.arrays["w"].dtype == np.float32
    rounds = result.history.rounds
    assert [r.round for r in rounds] == [0, 1, 2, 3]
    assert rounds[1].replies == 4 and rounds[1].failures == 0
    assert rounds[1].fit == {"node": 1.5}
    assert rounds[2].evaluate == {"loss": 2.0, "acc": 0.5}


def test_a_reply_is_aggregated_at_most_once() -> None:
    twice: Fault = lambda task, reply: [reply, reply]  # noqa: E731
    result = run(ScriptedGrid(2, {0: twice}), _app(sampling=Sampling(fraction_evaluate=0)))
    # Node 0's duplicate is dropped: the mean is still over two distinct replies.
    assert result.history.rounds[1].replies == 2
    assert result.arrays["w"].tolist() == [1.0, 1.0, 1.0]


def test_replies_for_unknown_tasks_or_from_the_wrong_node_are_dropped() -> None:
    def forged(task: Message, reply: Message) -> list[Message]:
        evil = Arrays({"w": np.full(3, 1e6, np.float32)})
        return [
            Message(
                "fit", task_id="not-a-task", node_id=1, is_reply=True, arrays=evil, num_examples=10
            ),
            Message(
                "fit",
                task_id=task.task_id.replace(":1", ":0"),
                node_id=1,
                is_reply=True,
                arrays=evil,
                num_examples=10,
            ),
            reply,
        ]

    result = run(ScriptedGrid(2, {1: forged}), _app(sampling=Sampling(fraction_evaluate=0)))
    assert result.arrays["w"].tolist() == [1.0, 1.0, 1.0]


def test_a_reply_from_the_wrong_node_does_not_close_the_real_task() -> None:
    def impostor_first(task: Message, reply: Message) -> list[Message]:
        impostor = Message(
            "fit",
            task_id=task.task_id,
            node_id=1,
            is_reply=True,
            arrays=Arrays({"w": np.full(3, 1e6, np.float32)}),
            num_examples=10,
        )
        return [impostor, reply]

    result = run(ScriptedGrid(2, {0: impostor_first}), _app(sampling=Sampling(fraction_evaluate=0)))
    record = result.history.rounds[1]
    assert (record.replies, record.failures) == (2, 0)
    assert result.arrays["w"].tolist() == [1.0, 1.0, 1.0]


def test_a_missing_reply_counts_as_a_failure_of_that_node() -> None:
    silent: Fault = lambda task, reply: []  # noqa: E731
    result = run(ScriptedGrid(4, {2: silent}), _app(sampling=Sampling(fraction_evaluate=0)))
    record = result.history.rounds[1]
    assert (record.replies, record.failures) == (3, 1)
    assert record.failed[0].node_id == 2 and "no reply" in record.failed[0].reason


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (Arrays({"w": np.zeros(4, np.float32)}), "expected float32[3]"),
        (Arrays({"w": np.zeros(3, np.int32)}), "expected float32[3]"),
        (Arrays({"w": np.array([0, np.nan, 0], np.float32)}), "non-finite"),
        (Arrays({"v": np.zeros(3, np.float32)}), "missing ['w']"),
    ],
)
def test_unusable_arrays_are_rejected_with_a_reason(bad: Arrays, reason: str) -> None:
    def corrupt(task: Message, reply: Message) -> list[Message]:
        return [task.reply(arrays=bad, num_examples=10)] if task.kind == "fit" else [reply]

    result = run(ScriptedGrid(4, {3: corrupt}), _app())
    record = result.history.rounds[1]
    assert record.failures == 1
    assert reason in record.failed[0].reason
    assert np.isfinite(result.arrays["w"]).all() and result.arrays["w"].shape == (3,)


def test_a_round_over_the_failure_tolerance_keeps_the_model() -> None:
    silent: Fault = lambda task, reply: []  # noqa: E731
    grid = ScriptedGrid(4, {0: silent, 1: silent, 2: silent})
    result = run(
        grid, _app(rounds=2, failure_tolerance=0.5, sampling=Sampling(fraction_evaluate=0))
    )
    assert [r.applied for r in result.history.rounds[1:]] == [False, False]
    assert result.arrays["w"].tolist() == [0.0, 0.0, 0.0]


def test_sampling_depends_only_on_seed_and_round() -> None:
    def sampled(seed: int) -> list[list[int]]:
        grid = ScriptedGrid(10)
        run(
            grid,
            _app(rounds=3, sampling=Sampling(fraction_fit=0.3, fraction_evaluate=0)),
            seed=seed,
        )
        return [[m.node_id for m in grid.sent if m.round == r] for r in (1, 2, 3)]

    assert sampled(7) == sampled(7)
    assert sampled(7) != sampled(8)
    assert all(len(nodes) == 3 for nodes in sampled(7))


def test_too_few_nodes_after_node_wait_stops_the_run_with_a_hint() -> None:
    app = _app(sampling=Sampling(min_fit_clients=5))
    app.node_wait = 0.2
    with pytest.raises(RunError, match="needs 5 clients for fit but only 2") as info:
        run(ScriptedGrid(2), app)
    assert "Hint:" in str(info.value)


def test_initial_arrays_come_from_a_client_when_the_server_has_none() -> None:
    class WithArrays(AddOne):
        def get_arrays(self, config):
            return Arrays({"w": np.full(2, 5.0)})

    class Grid1(ScriptedGrid):
        def dispatch(self, instructions, timeout):
            for task in instructions:
                yield handle(lambda ctx: WithArrays(0), _context(task.node_id), task)

    result = run(Grid1(2), ServerApp(FedAvg(sampling=Sampling(fraction_evaluate=0)), num_rounds=1))
    assert result.arrays["w"].tolist() == [6.0, 6.0]


def test_initial_arrays_failure_is_a_clear_run_error() -> None:
    with pytest.raises(RunError, match="initial arrays.*get_arrays"):
        run(ScriptedGrid(2), ServerApp(FedAvg(), num_rounds=1))


def test_events_trace_every_stage_and_reply() -> None:
    events: list[object] = []
    run(ScriptedGrid(3), _app(rounds=2), on_event=events.append)
    kinds = [type(e).__name__ for e in events]
    assert kinds.count("StageStarted") == 4  # fit + evaluate, two rounds
    assert kinds.count("ReplyReceived") == 12
    assert kinds.count("RoundFinished") == 3  # round 0 (initial model) and two rounds
    assert isinstance(events[1], StageStarted) and events[1].tasks == 3
    assert all(e.ok for e in events if isinstance(e, ReplyReceived))
    assert isinstance(events[-1], RoundFinished) and events[-1].record.round == 2


def test_centralized_evaluation_runs_on_round_zero_and_every_round() -> None:
    seen: list[tuple[int, float]] = []

    def evaluate_fn(rnd: int, arrays: Arrays) -> tuple[float, dict]:
        seen.append((rnd, float(arrays["w"][0])))
        return float(arrays["w"][0]), {"acc": 1.0}

    result = run(ScriptedGrid(2), _app(rounds=2, evaluate_fn=evaluate_fn))
    assert seen == [(0, 0.0), (1, 1.0), (2, 2.0)]
    assert result.history.rounds[2].centralized == {"loss": 2.0, "acc": 1.0}


def test_an_update_the_aggregator_refuses_is_counted_as_rejected_with_its_reason() -> None:
    from pollinate.loop.events import Event, UpdateRejected
    from pollinate.strategy import FitResult, UnusableUpdate

    class Picky(FedAvg):
        """Refuses node 1's update, as a strategy does with an update it cannot use."""

        def start_fit(self, round, current):  # type: ignore[no-untyped-def]
            inner = super().start_fit(round, current)

            class Aggregator:
                def add(self, result: FitResult) -> None:
                    if result.node_id == 1:
                        raise UnusableUpdate("node 1's update is of no use")
                    inner.add(result)

                def finish(self) -> Arrays:
                    return inner.finish()

            return Aggregator()

    events: list[Event] = []
    app = ServerApp(
        Picky(sampling=Sampling(fraction_evaluate=0.0)),
        num_rounds=1,
        initial_arrays=Arrays({"w": np.zeros(2)}),
    )
    result = run(ScriptedGrid(3), app, on_event=events.append)
    record = result.history.rounds[1]
    assert record.replies == 2 and record.rejected == 1 and record.applied
    assert [(f.node_id, f.reason) for f in record.failed] == [(1, "node 1's update is of no use")]
    assert [e.node_id for e in events if isinstance(e, UpdateRejected)] == [1]


def test_each_failure_is_recorded_and_announced_with_its_kind() -> None:
    from pollinate.loop import FailureKind, TaskFailed
    from pollinate.loop.events import Event
    from pollinate.records import MessageKind

    def on_fit(change: Callable[[Message, Message], list[Message]]) -> Fault:
        return lambda task, reply: change(task, reply) if task.kind == "fit" else [reply]

    nan = Arrays({"w": np.full(3, np.nan, np.float32)})
    faults: dict[int, Fault] = {
        0: on_fit(lambda task, reply: [task.reply(error="ValueError: bad partition")]),
        1: on_fit(lambda task, reply: [task.reply(error="node 1 went silent", lost=True)]),
        2: on_fit(lambda task, reply: []),  # never answers
        3: on_fit(lambda task, reply: [task.reply(arrays=nan, num_examples=10)]),
        4: lambda task, reply: (
            [task.reply(loss=float("nan"), num_examples=5)]
            if task.kind == MessageKind.EVALUATE
            else [reply]
        ),
    }
    events: list[Event] = []
    app = _app(failure_tolerance=1.0, sampling=Sampling(fraction_evaluate=1.0))
    result = run(ScriptedGrid(6, faults), app, on_event=events.append)
    record = result.history.rounds[1]
    kinds = {(f.node_id, f.stage, f.kind) for f in record.failed}
    assert kinds == {
        (0, "fit", FailureKind.CLIENT),
        (1, "fit", FailureKind.LOST),
        (2, "fit", FailureKind.TIMEOUT),
        (3, "fit", FailureKind.REJECTED),
        (4, "evaluate", FailureKind.INVALID),
    }
    reasons = {f.node_id: f.reason for f in record.failed}
    assert reasons[0] == "client failed: ValueError: bad partition"
    assert reasons[1] == "node 1 went silent"  # the hub's words, not the client's
    announced = {(e.node_id, e.stage, e.kind) for e in events if isinstance(e, TaskFailed)}
    assert announced == kinds - {(3, "fit", FailureKind.REJECTED)}  # an UpdateRejected
    assert record.replies == 2 and record.applied
    assert 0 < record.aggregation_seconds < record.seconds
    again = type(record).from_dict(record.to_dict())
    assert {(f.node_id, f.kind) for f in again.failed} == {(n, k) for n, _, k in kinds}
