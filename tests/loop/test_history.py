"""history.jsonl: a header saying what ran, then a line per round, appended as rounds end;
History.load reads it (and the history.json of older pollinate), keeping every whole round
of a file a crash cut mid-line (docs/history.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pollinate.loop.events import RoundFinished, StageStarted
from pollinate.loop.history import SCHEMA, Failure, FailureKind, History, RoundRecord
from pollinate.loop.history_writer import HistoryWriter


def history() -> History:
    failed = [
        Failure(3, "fit", "client failed: x", FailureKind.CLIENT),
        Failure(4, "evaluate", "timed out", FailureKind.TIMEOUT),
    ]
    rounds = [RoundRecord(round=0), RoundRecord(round=1, replies=2, failures=1, failed=failed)]
    return History(
        rounds,
        app="demo",
        seed=7,
        config={"lr": 0.5, "strategy": "fedavg"},
        app_hash="3f2a",
        overrides={"lr": "0.5"},
        strategy="FedAvg",
        num_rounds=3,
        clients=10,
    )


def test_the_first_line_says_what_ran_and_each_round_is_a_line(tmp_path: Path) -> None:
    lines = history().save(tmp_path).read_text().splitlines()
    header = json.loads(lines[0])
    assert list(header) == [
        *("schema", "pollinate", "app", "app_hash", "run_id", "seed", "strategy"),
        *("num_rounds", "clients", "placement", "config", "overrides"),
    ]
    assert (header["schema"], header["app"], header["seed"], header["clients"]) == (
        SCHEMA,
        "demo",
        7,
        10,
    )
    assert header["config"] == {"lr": 0.5, "strategy": "fedavg"} and header["pollinate"]
    assert [json.loads(line) for line in lines[1:]] == [r.to_dict() for r in history().rounds]


def test_load_reads_what_save_wrote(tmp_path: Path) -> None:
    saved = history()
    loaded = History.load(saved.save(tmp_path))
    assert loaded == saved and History.load(tmp_path) == saved


def test_the_writer_appends_each_round_as_it_ends(tmp_path: Path) -> None:
    start = History(app="demo", seed=7, strategy="FedAvg")
    with HistoryWriter(tmp_path, start) as writer:
        assert History.load(tmp_path) == start  # the header is there before any round
        for record in history().rounds:
            writer(StageStarted(record.round, "fit", 3))  # type: ignore[arg-type]
            writer(RoundFinished(record))
            assert History.load(tmp_path).rounds[-1] == record  # on disk as it returns
    assert History.load(writer.path).rounds == history().rounds


def test_a_line_cut_by_a_crash_leaves_every_whole_round(tmp_path: Path) -> None:
    path = history().save(tmp_path)
    whole = path.read_text()
    path.write_text(whole + RoundRecord(round=2, replies=5).line()[:17])  # killed mid-line
    assert History.load(path).rounds == history().rounds
    path.write_text(whole[:-1])  # cut before its last newline: the last round is whole
    assert History.load(path).rounds == history().rounds


def test_a_bad_line_inside_the_file_is_refused_with_its_number(tmp_path: Path) -> None:
    lines = history().save(tmp_path).read_text().splitlines(keepends=True)
    (tmp_path / "history.jsonl").write_text(lines[0] + "{not json\n" + lines[2])
    with pytest.raises(ValueError, match="history line 2 is not JSON"):
        History.load(tmp_path)
    (tmp_path / "history.jsonl").write_text(lines[0] + '{"round": "one"}\n')
    with pytest.raises(ValueError, match="history line 2 is not a round record"):
        History.load(tmp_path)
    (tmp_path / "history.jsonl").write_text(lines[0] + '{"round": 1, "bogus": 1}\n')
    with pytest.raises(ValueError, match="history line 2 is not a round record"):
        History.load(tmp_path)


def test_a_round_run_again_after_a_hub_restart_replaces_the_rounds_from_it_on(
    tmp_path: Path,
) -> None:
    with HistoryWriter(tmp_path, History(app="demo")) as writer:
        for number in (0, 1, 2):
            writer.append(RoundRecord(round=number))
        writer.append(RoundRecord(round=2, resumed=True))
    rounds = History.load(tmp_path).rounds
    assert [(r.round, r.resumed) for r in rounds] == [(0, False), (1, False), (2, True)]


def test_load_reads_the_history_json_of_schema_2(tmp_path: Path) -> None:
    old = {
        "schema": 2,
        "pollinate": "0.1.0",
        "app": "demo",
        "seed": 7,
        "config": {"lr": 0.5},
        "rounds": [r.to_dict() for r in history().rounds],
    }
    (tmp_path / "history.json").write_text(json.dumps(old, indent=2))
    loaded = History.load(tmp_path)
    assert loaded.rounds == history().rounds and (loaded.app, loaded.seed) == ("demo", 7)
    (tmp_path / "one-line.json").write_text(json.dumps(old))
    assert History.load(tmp_path / "one-line.json").rounds == history().rounds


def test_load_reads_the_bare_list_of_schema_1(tmp_path: Path) -> None:
    path = tmp_path / "history.json"
    path.write_text(json.dumps([r.to_dict() for r in history().rounds]))
    loaded = History.load(path)
    assert loaded.rounds == history().rounds and loaded.app == "" and loaded.seed is None


def test_a_newer_schema_is_refused_with_the_version_that_reads_it(tmp_path: Path) -> None:
    header = {**history().header(), "schema": SCHEMA + 1, "pollinate": "9.0"}
    (tmp_path / "history.jsonl").write_text(json.dumps(header) + "\n")
    with pytest.raises(ValueError, match="(?s)newer than this pollinate reads.*pollinate 9.0"):
        History.load(tmp_path)
    old = {**history().to_dict(), "schema": SCHEMA + 1, "pollinate": "9.0"}
    (tmp_path / "history.json").write_text(json.dumps(old))
    with pytest.raises(ValueError, match="newer than this pollinate reads"):
        History.load(tmp_path / "history.json")


def test_a_file_that_is_no_history_is_refused(tmp_path: Path) -> None:
    (tmp_path / "history.jsonl").write_text('{"config": [1]}\n')
    with pytest.raises(ValueError, match="not a pollinate history"):
        History.load(tmp_path)
    (tmp_path / "history.jsonl").write_text('{"schema": 3, "config": [1]}\n')
    with pytest.raises(ValueError, match="a field has the wrong type"):
        History.load(tmp_path)


def test_saving_replaces_the_file_whole(tmp_path: Path) -> None:
    history().save(tmp_path)
    shorter = History([RoundRecord(round=0)], app="demo")
    shorter.save(tmp_path)
    assert History.load(tmp_path) == shorter
    assert [p.name for p in tmp_path.iterdir()] == ["history.jsonl"]


def test_a_schema_3_file_reads_with_failures_of_unknown_kind(tmp_path: Path) -> None:
    header = {**history().header(), "schema": 3}
    round_1 = history().rounds[1].to_dict()
    round_1.pop("aggregation_seconds")
    for failure in round_1["failed"]:
        failure.pop("kind")
    file = tmp_path / "history.jsonl"
    file.write_text(json.dumps(header) + "\n" + json.dumps(round_1) + "\n")
    loaded = History.load(file).rounds[0]
    assert [(f.node_id, f.kind) for f in loaded.failed] == [
        (3, FailureKind.UNKNOWN),
        (4, FailureKind.UNKNOWN),
    ]
    assert loaded.aggregation_seconds == 0.0


def test_a_failure_of_a_kind_pollinate_does_not_know_is_refused(tmp_path: Path) -> None:
    round_1 = history().rounds[1].to_dict()
    round_1["failed"][0]["kind"] = "<script>"
    file = tmp_path / "history.jsonl"
    file.write_text(json.dumps(history().header()) + "\n" + json.dumps(round_1) + "\n")
    with pytest.raises(ValueError, match="history line 2 is not a round record"):
        History.load(file)
