"""A round's tasks share one model: it crosses from the run process to the hub once, and the
hub holds it once, whatever the number of nodes; a run process cannot make a task take arrays
it did not send."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import numpy as np
import pytest

from pollinate.hub.channel import Channel, ChannelError
from pollinate.hub.run_process import _tasks as to_channel
from pollinate.hub.supervisor import _tasks as from_channel
from pollinate.records import Arrays, Message, MessageKind

MODEL_BYTES = 1 << 16


@pytest.fixture
def pair() -> Iterator[tuple[Channel, Channel]]:
    a, b = socket.socketpair()
    limit = 1 << 20
    hub, child = (
        Channel(a, max_json=limit, max_message=limit),
        Channel(b, max_json=limit, max_message=limit),
    )
    yield hub, child
    hub.close()
    child.close()


def fit(node: int, arrays: Arrays) -> Message:
    return Message(
        MessageKind.FIT, task_id=f"r:1:fit:{node}", run_id="r", node_id=node, arrays=arrays
    )


def test_the_tasks_of_a_round_carry_its_model_once_and_share_it_at_the_hub(
    pair: tuple[Channel, Channel],
) -> None:
    hub, child = pair
    model = Arrays({"w": np.arange(MODEL_BYTES // 4, dtype=np.float32)})
    other = Arrays({"w": np.ones(3, np.float32)})
    instructions = [fit(node, model) for node in range(5)] + [fit(5, other), fit(6, Arrays())]
    same_arrays, chunks = to_channel(instructions)
    assert same_arrays == [0, 0, 0, 0, 0, 5, 6]
    child.send({"op": "dispatch", "same_arrays": same_arrays}, chunks)
    op, messages = hub.receive()
    assert sum(len(m) for m in messages) < MODEL_BYTES + 7 * 1024  # the model crossed once

    tasks = from_channel(messages, op["same_arrays"], "r")
    assert [t.task_id for t in tasks] == [m.task_id for m in instructions]
    assert all(t.arrays is tasks[0].arrays for t in tasks[:5])  # held once
    assert np.array_equal(tasks[3].arrays["w"], model["w"])
    assert tasks[5].arrays["w"].tolist() == [1.0, 1.0, 1.0] and not tasks[6].arrays


@pytest.mark.parametrize(
    ("same_arrays", "refusal"),
    [
        ([0, 2, 2], "task 1 cannot share the arrays of task 2"),  # a later task
        ([0, 7, 2], "task 1 cannot share the arrays of task 7"),
        ([0, "0", 2], "task 1 cannot share the arrays of task '0'"),
        ([0, 0, 1], "task 2 cannot share the arrays of task 1"),  # one that shares itself
        ([0, 1, 0], "task 2 shares task 0's arrays and has its own"),
        ([0, 1], "one index per task"),
        ({"1": 0}, "one index per task"),
    ],
)
def test_a_task_cannot_take_arrays_it_was_not_sent_with(
    pair: tuple[Channel, Channel], same_arrays: object, refusal: str
) -> None:
    hub, child = pair
    own = [Arrays({"w": np.zeros(4, np.float32)}), Arrays(), Arrays({"w": np.ones(2)})]
    _, chunks = to_channel([fit(node, arrays) for node, arrays in enumerate(own)])
    child.send({"op": "dispatch"}, chunks)
    _, messages = hub.receive()
    with pytest.raises(ChannelError, match=refusal):
        from_channel(messages, same_arrays, "r")
