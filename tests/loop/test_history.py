"""history.json: an object with its schema version and what ran; History.load reads it and
the bare list of rounds older files hold (docs/history.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pollinate.loop.history import SCHEMA, Failure, History, RoundRecord


def history() -> History:
    failed = [Failure(3, "fit", "client failed: x"), Failure(4, "evaluate", "timed out")]
    rounds = [RoundRecord(round=0), RoundRecord(round=1, replies=2, failures=1, failed=failed)]
    return History(rounds, app="demo", seed=7, config={"lr": 0.5, "strategy": "fedavg"})


def test_the_file_is_an_object_with_schema_version_app_seed_and_config(tmp_path: Path) -> None:
    data = json.loads(history().save(tmp_path).read_text())
    assert list(data) == ["schema", "pollinate", "app", "seed", "config", "rounds"]
    assert (data["schema"], data["app"], data["seed"]) == (SCHEMA, "demo", 7)
    assert data["config"] == {"lr": 0.5, "strategy": "fedavg"} and data["pollinate"]
    assert data["rounds"][1] == history().rounds[1].to_dict()


def test_load_reads_what_save_wrote(tmp_path: Path) -> None:
    saved = history()
    loaded = History.load(saved.save(tmp_path))
    assert loaded == saved and History.load(tmp_path) == saved


def test_load_reads_the_bare_list_of_schema_1(tmp_path: Path) -> None:
    path = tmp_path / "history.json"
    path.write_text(json.dumps([r.to_dict() for r in history().rounds]))
    loaded = History.load(path)
    assert loaded.rounds == history().rounds and loaded.app == "" and loaded.seed is None


def test_a_newer_schema_is_refused_with_the_version_that_reads_it(tmp_path: Path) -> None:
    data = {**history().to_dict(), "schema": SCHEMA + 1, "pollinate": "9.0"}
    (tmp_path / "history.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="(?s)newer than this pollinate reads.*pollinate 9.0"):
        History.load(tmp_path)


def test_saving_replaces_the_file_whole(tmp_path: Path) -> None:
    history().save(tmp_path)
    shorter = History([RoundRecord(round=0)], app="demo")
    shorter.save(tmp_path)
    assert History.load(tmp_path) == shorter
    assert [p.name for p in tmp_path.iterdir()] == ["history.json"]
