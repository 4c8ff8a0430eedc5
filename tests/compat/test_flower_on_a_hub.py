"""A Flower app runs on a pollinate hub with only its ``flwr`` imports changed, as it runs
in simulation: the Message-API app (``@app.main()`` calling ``FedAvg().start()``) on a hub
and five node processes matches what Flower 1.41 recorded, round by round.

The hub runs the app's server side in a run process of its own (issue 14), so this also
shows ``main``'s hand-over to the engine working there. The nodes get ``partition-id`` and
``num-partitions`` from ``--node-config``, as Flower's SuperNodes get them from
``--node-config``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.compat.test_flower_apps import assert_close, recorded, with_pollinate_imports
from tests.deployment.conftest import open_deployment

pytestmark = [pytest.mark.slow, pytest.mark.deployment]


def test_the_message_api_app_on_a_hub_matches_flower(tmp_path: Path) -> None:
    flower = recorded("sklearn-message")
    app = with_pollinate_imports("sklearn-message", tmp_path)
    nodes = flower["num-supernodes"]
    with open_deployment(tmp_path / "deployment") as deployment:
        deployment.start_hub()
        deployment.start_nodes([app] * nodes)
        result = deployment.run(app)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.history is not None
    ours = {r["round"]: r for r in result.history}
    for theirs in flower["rounds"]:
        mine = ours[theirs["round"]]
        what = f"round {theirs['round']} on a hub"
        assert mine["replies"] == theirs["replies"] == nodes, what
        assert_close(theirs["fit"], mine["fit"], what + " fit")
        assert_close(theirs["evaluate"], mine["evaluate"], what + " evaluate")
