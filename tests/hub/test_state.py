"""The hub's durable state: runs, nodes and logs in SQLite (WAL), blobs by content address."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from pollinate.hub.state import HubState, RunRow, RunStatus
from pollinate.text import MAX_LINE


@pytest.fixture
def state(tmp_path: Path) -> Iterator[HubState]:
    state = HubState(tmp_path / "hub")
    yield state
    state.close()


def row(run_id: str, created: float, **fields: object) -> RunRow:
    values: dict[str, object] = {
        "run_id": run_id,
        "app": "app",
        "app_hash": "ab" * 32,
        "archive": "cd" * 32,
        "overrides": {"lr": "0.1"},
        "rounds": 3,
        "seed": 7,
        "status": RunStatus.RUNNING,
        "round": 0,
        "created": created,
        "detail": "",
    }
    return RunRow(**{**values, **fields})  # type: ignore[arg-type]


def test_the_database_is_in_wal_mode(state: HubState) -> None:
    # WAL lets another process (a dashboard, `sqlite3 hub.db`) read while the hub writes
    assert state.connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    other = sqlite3.connect(state.data_dir / "hub.db")
    assert other.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    other.close()


def test_runs_are_stored_updated_and_listed_in_creation_order(state: HubState) -> None:
    state.add_run(row("second", created=20.0), ("status", "submitted"))
    state.add_run(row("first", created=10.0), ("status", "submitted"))
    state.update_run("second", status="finished", round=3, detail="done")

    assert [r.run_id for r in state.runs()] == ["first", "second"]
    assert state.run("second") == row(
        "second", created=20.0, status="finished", round=3, detail="done"
    )
    assert state.run("first") == row("first", created=10.0)  # overrides come back as a dict
    assert state.run("missing") is None


def test_a_run_reads_back_with_its_status_an_enum_and_rounds_none_for_the_apps_own(
    state: HubState,
) -> None:
    state.add_run(row("r", created=1.0, rounds=None), ("status", "submitted"))
    read = state.run("r")
    assert read is not None and read.rounds is None and read.status is RunStatus.RUNNING
    state.update_run("r", status=RunStatus.FAILED, rounds=5)
    read = state.run("r")
    assert read is not None and (read.status, read.rounds) == (RunStatus.FAILED, 5)
    with pytest.raises(ValueError, match="'done' is not a valid RunStatus"):
        state.update_run("r", status="done")


def test_the_columns_keep_the_values_earlier_hubs_wrote(state: HubState) -> None:
    # hub.db stays readable both ways: a status is its value, "the app's own rounds" is -1
    state.add_run(row("new", created=1.0, rounds=None), ("status", "submitted"))
    with state.reading() as db:
        db.execute(
            "INSERT INTO runs VALUES ('old', 'app', 'h', 'a', '{}', -1, 0, 'stopped', 2, 0.0, '')"
        )
        stored = db.execute("SELECT rounds, status FROM runs WHERE run_id = 'new'").fetchone()
    assert stored == (-1, "running")
    old = state.run("old")
    assert old is not None and (old.rounds, old.status) == (None, RunStatus.STOPPED)


def test_a_run_id_is_unique(state: HubState) -> None:
    state.add_run(row("a", created=1.0), ("status", "submitted"))
    with pytest.raises(sqlite3.IntegrityError):
        state.add_run(row("a", created=2.0), ("status", "submitted"))
    assert state.run("a") == row("a", created=1.0)  # the failed insert left nothing behind


def test_state_survives_a_restart(tmp_path: Path) -> None:
    first = HubState(tmp_path)
    first.add_run(row("a", created=1.0), ("status", "submitted"))
    node = first.node_for_name("site-a")
    first.close()

    again = HubState(tmp_path)
    assert again.run("a") == row("a", created=1.0)
    assert [r.text for r in again.log_after("a", 0)] == ["submitted"]
    assert again.node_for_name("site-a") == node
    again.close()


def test_the_log_is_per_run_in_order_and_read_after_a_sequence_number(state: HubState) -> None:
    first = state.append_log("a", "status", "submitted")
    state.append_log("b", "status", "other run")
    second = state.append_log("a", "round", "{}")
    third = state.append_log("a", "status", "finished")

    rows = state.log_after("a", 0)
    assert [(r.seq, r.kind, r.text) for r in rows] == [
        (first, "status", "submitted"),
        (second, "round", "{}"),
        (third, "status", "finished"),
    ]
    assert all(r.run_id == "a" and r.time > 0 for r in rows)
    assert [r.text for r in state.log_after("a", second)] == ["finished"]
    assert state.log_after("a", third) == []
    assert state.log_after("nobody", 0) == []


def test_text_for_people_is_stored_as_one_bounded_line(state: HubState) -> None:
    # a log line may quote a node: what a follower of the log reads is one line, cut
    error = "x" * (1 << 20) + "\nrun a finished"
    state.add_run(row("a", created=1.0, app="app\x1b[2J"), ("status", f"submitted: {error}"))
    state.append_log("a", "log", f"node 7 failed: {error}")
    state.append_log("a", "round", '{"round": 1,\n "failed": []}')  # JSON, kept as it is
    state.update_run("a", status="failed", detail=f"node 7: {error}")
    first, log, round_line = state.log_after("a", 0)
    assert first.text == "submitted: " + "x" * (MAX_LINE - 11) + f"… [{len(error) + 11} chars]"
    assert log.text.startswith("node 7 failed: xxx") and "\n" not in log.text
    assert log.text.endswith(f"… [{len(error) + 15} chars]") and len(log.text) < MAX_LINE + 30
    assert round_line.text == '{"round": 1,\n "failed": []}'
    run = state.run("a")
    assert run is not None and run.app == "app\\x1b[2J"
    assert run.detail.endswith(f"… [{len(error) + 8} chars]") and len(run.detail) < MAX_LINE + 30


def test_a_named_node_keeps_its_id_and_new_nodes_get_new_ones(state: HubState) -> None:
    a, b = state.node_for_name("a"), state.node_for_name("b")
    assert a != b
    assert state.node_for_name("a") == a
    assert state.new_node() not in (a, b)


def test_blobs_are_addressed_by_their_sha256(state: HubState) -> None:
    data = b"an app archive" * 1000
    digest = state.put_blob(data)
    assert digest == hashlib.sha256(data).hexdigest()
    path = state.blob_path(digest)
    assert path == state.data_dir / "blobs" / digest[:2] / digest
    assert path.read_bytes() == data

    assert state.put_blob(data) == digest  # the same bytes: the same file
    assert state.put_blob(b"other") != digest
    assert sorted(p.name for p in path.parent.parent.rglob("*") if p.is_file()) == sorted(
        [digest, hashlib.sha256(b"other").hexdigest()]
    )  # no partial files left behind
