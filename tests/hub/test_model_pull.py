"""Pulling a run's model from the hub (Hub.model, what `pollinate pull` serves): the newest
round or any earlier one, each kept; only for callers who may read the run, and audited."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from pollinate.hub.access import Caller, Forbidden, Role
from pollinate.hub.credentials import HubCredentials
from pollinate.hub.hub import Hub
from pollinate.hub.journal import NoModel
from pollinate.hub.state import RunRow, RunStatus
from pollinate.loop.checkpoint import Checkpoint
from pollinate.loop.history import RoundRecord
from pollinate.records import Arrays

ALICE = Caller("alice", Role.VIEWER, frozenset({"cardiology"}))
EVE = Caller("eve", Role.MEMBER, frozenset({"oncology"}))


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    credentials = HubCredentials.load_or_create(tmp_path, ["localhost"], ["127.0.0.1"], 3600)
    hub = Hub(tmp_path, credentials=credentials)
    row = RunRow("r", "app", "h", "a", {}, 3, 0, RunStatus.FINISHED, 0, time.time(), "")
    with hub.state.submitting_to("cardiology"):
        hub.state.add_run(row, ("status", "submitted"))
    yield hub
    hub.close()
    hub.state.close()


def model_at(round: int) -> Arrays:
    return Arrays({"w": np.full((2, 3), round, np.float32), "b": np.arange(3) + round})


def run_rounds(hub: Hub, last: int) -> None:
    for rnd in range(last + 1):
        state = Arrays({"m/w": np.full((2, 3), 0.1 * rnd)})
        hub.journal.save("r", Checkpoint(rnd, model_at(rnd), state), RoundRecord(round=rnd))


def test_the_newest_round_by_default_and_every_earlier_one_on_request(hub: Hub) -> None:
    run_rounds(hub, 3)
    assert hub.model("r") == (3, model_at(3))
    for rnd in range(4):
        assert hub.model("r", rnd) == (rnd, model_at(rnd))  # the model, not the state


def test_a_viewer_of_the_project_may_pull_and_the_pull_is_audited(hub: Hub) -> None:
    run_rounds(hub, 1)
    assert hub.model("r", caller=ALICE)[0] == 1
    rows = [row for row in hub.audit() if row.action == "pull model"]
    assert [(row.who, row.target) for row in rows] == [("alice", "run r round 1")]


def test_a_caller_of_another_project_is_refused(hub: Hub) -> None:
    run_rounds(hub, 1)
    with pytest.raises(Forbidden):
        hub.model("r", caller=EVE)


def test_what_is_not_there_says_what_is(hub: Hub) -> None:
    with pytest.raises(NoModel, match="no run 'nope'"):
        hub.model("nope")
    with pytest.raises(NoModel, match="no model yet"):
        hub.model("r")
    run_rounds(hub, 2)
    with pytest.raises(NoModel, match="(?s)no round 5 yet.*newest model is of round 2"):
        hub.model("r", 5)
    (hub.state.data_dir / "runs" / "r" / "checkpoint-000001.pln").unlink()  # an older hub's run
    with pytest.raises(NoModel, match="(?s)kept no model of run 'r' at round 1.*pull round 2"):
        hub.model("r", 1)
    with pytest.raises(ValueError, match="negative"):
        hub.model("r", -1)
    with pytest.raises(TypeError, match="round must be an int"):
        hub.model("r", "2")  # type: ignore[arg-type]
