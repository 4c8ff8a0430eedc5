"""A node decodes each task into the arrays of the one before, once its app let go of them
(``wire.Recycler``): a model-sized allocation a round saved. A real hub process, two node
agents in this process (to count what their recyclers hand out), a real run over them."""

from __future__ import annotations

import threading

import numpy as np

from pollinate.node.agent import NodeAgent
from tests.deployment.apps import write_tiny_app
from tests.deployment.conftest import Deployment, wait_for


def counting(agent: NodeAgent) -> list[int]:
    """The ids of the arrays ``agent``'s recycler hands out, from now on."""
    recycler, reused = agent.client._recycler, []
    take = recycler.take

    def counted(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray | None:
        array = take(shape, dtype)
        if array is not None:
            reused.append(id(array))
        return array

    recycler.take = counted  # type: ignore[method-assign]
    return reused


def test_a_node_decodes_each_task_into_the_last_ones_arrays(deployment: Deployment) -> None:
    deployment.start_hub()
    app = write_tiny_app(deployment.directory / "app", **{"num-rounds": 3})
    agents = [NodeAgent(deployment.fleet, app, name=f"recycling-{i}") for i in range(2)]
    reused = [counting(agent) for agent in agents]
    threads = [threading.Thread(target=agent.run, daemon=True) for agent in agents]
    for thread in threads:
        thread.start()
    try:
        connected = lambda: all(agent.client.node_id is not None for agent in agents)  # noqa: E731
        wait_for(connected, "the nodes to connect")
        result = deployment.run(app)
    finally:
        for agent in agents:
            agent.shutdown()
        for thread in threads:
            thread.join(30)
    assert result.returncode == 0, result.stderr
    assert [r["round"] for r in result.history or []] == [0, 1, 2, 3]
    # each node had a fit and an evaluate task a round, all of the model's shape: every task
    # after its first was decoded into the arrays of the one before
    assert all(len(ids) >= 5 for ids in reused), reused
