"""The journal: what a run needs to survive a crash of its hub, on a real data dir.

Each test names an invariant of hub/journal.py: a reply is recorded at most once per task
(also when two pushes of it race), a recorded reply is handed back when its task is sent
again, and a checkpoint (with its history, from the run's log) is what a restarted hub
resumes from.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import numpy as np
import pytest

from pollinate import wire
from pollinate.errors import PollinateError, StorageError, WireError
from pollinate.hub.fleet import Duplicate
from pollinate.hub.journal import Journal, Opened
from pollinate.hub.state import HubState, RunRow, RunStatus
from pollinate.loop.checkpoint import Checkpoint
from pollinate.loop.history import History, RoundRecord
from pollinate.records import Arrays, Message

TIMEOUT = 10.0


@pytest.fixture
def state(tmp_path: Path) -> Iterator[HubState]:
    state = HubState(tmp_path / "hub")
    yield state
    state.close()


@pytest.fixture
def journal(state: HubState) -> Journal:
    return Journal(state)


def instruction(node: int, rnd: int = 1, run: str = "r", kind: str = "fit") -> Message:
    return Message(
        kind,
        task_id=f"{run}:{rnd}:{kind}:{node}",
        run_id=run,
        round=rnd,
        node_id=node,
        arrays=Arrays({"w": np.zeros(3, np.float32)}),
    )


def reply_to(task: Message, value: float = 1.0) -> Message:
    arrays = Arrays(
        {"w": np.full(3, value, np.float32), "layer/b": np.arange(4, dtype=np.int64).reshape(2, 2)}
    )
    return task.reply(arrays=arrays, num_examples=7, metrics={"acc": value})


def reply_file(journal: Journal, task: Message) -> Path:
    row = journal.task(task.task_id)
    assert row is not None and row.reply is not None, f"{task.task_id} has no recorded reply"
    return Path(row.reply)


def has_reply(journal: Journal, task: Message) -> bool:
    row = journal.task(task.task_id)
    return row is not None and row.reply is not None


def replies_on_disk(state: HubState, run: str = "r") -> set[Path]:
    return set((state.data_dir / "runs" / run / "replies").glob("*.pln"))


def assert_same_reply(got: Message | None, expected: Message) -> None:
    assert got is not None
    assert (got.task_id, got.run_id, got.round, got.node_id, got.kind, got.is_reply) == (
        expected.task_id,
        expected.run_id,
        expected.round,
        expected.node_id,
        expected.kind,
        True,
    )
    assert (got.num_examples, got.metrics) == (expected.num_examples, expected.metrics)
    assert list(got.arrays) == list(expected.arrays)
    for name, array in expected.arrays.items():
        assert got.arrays[name].dtype == array.dtype
        np.testing.assert_array_equal(got.arrays[name], array)


# --- a reply is recorded at most once per task id ---------------------------------------------


def test_a_reply_is_recorded_at_most_once_per_task_and_the_first_one_stays(
    state: HubState, journal: Journal
) -> None:
    task = instruction(1)
    journal.open([task])
    first, second = reply_to(task, 1.0), reply_to(task, 2.0)

    assert journal.record(first) is True
    with pytest.raises(Duplicate):  # the task has its reply: a different one is refused
        journal.record(second)

    assert len(replies_on_disk(state)) == 1
    assert_same_reply(journal.open([task]).answered[task.task_id], first)


def test_a_reply_to_a_task_never_opened_is_not_recorded(state: HubState, journal: Journal) -> None:
    assert journal.record(reply_to(instruction(1))) is False
    assert journal.task("r:1:fit:1") is None
    assert replies_on_disk(state) == set()


def test_an_opened_task_has_no_reply_until_one_is_recorded(journal: Journal) -> None:
    task = instruction(1)
    journal.open([task])
    row = journal.task(task.task_id)
    assert row is not None and (row.run_id, row.round, row.node_id, row.reply) == ("r", 1, 1, None)
    journal.record(reply_to(task))
    assert has_reply(journal, task)


def two_pushes_at_once(
    state: HubState, journal: Journal, monkeypatch: pytest.MonkeyPatch, pushes: list[Message]
) -> tuple[list[bool | PollinateError], list[Path]]:
    """Record ``pushes`` (two) at once, each written to disk before either is noted; what
    each push was told, and the files they wrote."""
    both_written = threading.Barrier(2, timeout=TIMEOUT)
    written: list[Path] = []
    write_file = state.write_file_bytes

    def write_then_wait(path: Path, pieces: Iterable[bytes | memoryview]) -> None:
        write_file(path, pieces)
        written.append(path)
        both_written.wait()  # neither push notes its file before both are on disk

    monkeypatch.setattr(state, "write_file_bytes", write_then_wait)
    told: list[bool | PollinateError] = [False, False]

    def push(i: int) -> None:
        try:
            told[i] = journal.record(pushes[i])
        except PollinateError as exc:
            told[i] = exc

    threads = [threading.Thread(target=push, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    return told, written


def test_two_pushes_of_one_reply_recorded_at_once_leave_one_file_and_one_reply(
    state: HubState, journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    task = instruction(1)
    journal.open([task])
    reply = reply_to(task, 1.0)

    told, written = two_pushes_at_once(state, journal, monkeypatch, [reply, reply])

    assert told == [True, True]  # each push is told its task has its reply
    assert len(set(written)) == 2  # each wrote its own file...
    assert replies_on_disk(state) == {reply_file(journal, task)}  # ...and the loser deleted its
    assert_same_reply(journal.open([task]).answered[task.task_id], reply)


def test_of_two_different_replies_recorded_at_once_the_first_stands_the_other_is_a_duplicate(
    state: HubState, journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    task = instruction(1)
    journal.open([task])
    pushes = [reply_to(task, 1.0), reply_to(task, 2.0)]

    told, _ = two_pushes_at_once(state, journal, monkeypatch, pushes)

    recorded = journal.open([task]).answered[task.task_id]
    winner = [p.metrics["acc"] for p in pushes].index(recorded.metrics["acc"])
    assert told[winner] is True
    assert isinstance(told[1 - winner], Duplicate) and "duplicate" in str(told[1 - winner])
    assert replies_on_disk(state) == {reply_file(journal, task)}
    assert_same_reply(recorded, pushes[winner])


def test_the_same_reply_recorded_again_is_taken_and_a_different_one_is_a_duplicate(
    state: HubState, journal: Journal
) -> None:
    task = instruction(1)
    journal.open([task])
    reply = reply_to(task, 1.0)
    assert journal.record(reply) is True

    assert journal.record(reply_to(task, 1.0)) is True  # equal: its node missed "accepted"
    with pytest.raises(Duplicate, match=r"duplicate reply to task 'r:1:fit:1'.*which stands"):
        journal.record(reply_to(task, 1.5))
    assert len(replies_on_disk(state)) == 1
    assert_same_reply(journal.open([task]).answered[task.task_id], reply)


def pushed_file(journal: Journal, reply: Message) -> Path:
    """The reply written into a journal file as the fleet port writes one, not yet recorded."""
    data = wire.encode(reply)
    file = journal.reply_file(reply, len(data))
    file.write(data)
    file.finish()
    return file.path


def test_a_pushed_file_is_recorded_once_and_a_different_one_is_told_a_duplicate(
    state: HubState, journal: Journal
) -> None:
    task = instruction(1)
    journal.open([task])
    first = pushed_file(journal, reply_to(task, 1.0))
    assert journal.record_file(reply_to(task, 1.0), first) is True
    assert reply_file(journal, task) == first

    again = pushed_file(journal, reply_to(task, 1.0))
    assert journal.record_file(reply_to(task, 1.0), again) is True  # its node missed "accepted"
    other = pushed_file(journal, reply_to(task, 1.5))
    with pytest.raises(Duplicate, match="which stands"):
        journal.record_file(reply_to(task, 1.5), other)
    assert replies_on_disk(state) == {first}


def test_a_pushed_file_that_cannot_be_read_back_is_not_called_a_duplicate(
    state: HubState, journal: Journal
) -> None:
    task = instruction(1)
    journal.open([task])
    assert journal.record(reply_to(task, 1.0)) is True
    gone = pushed_file(journal, reply_to(task, 1.0))
    gone.unlink()  # the disk lost it: nothing says it differs from the recorded reply
    assert journal.record_file(reply_to(task, 1.0), gone) is True
    assert len(replies_on_disk(state)) == 1


# --- replies recorded at once share their commit (group commit) --------------------------------


def pushes_at_once(journal: Journal, pushes: list[Message]) -> list[bool | PollinateError]:
    """Record ``pushes``, each from its own thread, all let go at once; what each was told."""
    start = threading.Barrier(len(pushes), timeout=TIMEOUT)
    told: list[bool | PollinateError] = [False] * len(pushes)

    def push(i: int) -> None:
        start.wait()
        try:
            told[i] = journal.record(pushes[i])
        except PollinateError as exc:
            told[i] = exc

    threads = [threading.Thread(target=push, args=(i,)) for i in range(len(pushes))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    assert not any(thread.is_alive() for thread in threads), "a push never returned"
    return told


def test_many_replies_recorded_at_once_each_get_their_answer_and_duplicates_are_told(
    tmp_path: Path,
) -> None:
    state = HubState(tmp_path / "hub")
    journal = Journal(state)
    tasks = [instruction(node) for node in range(40)]
    journal.open(tasks)
    twice = [reply_to(task, 1.0) for task in tasks[:20]]  # pushed twice: both are told True
    rivals = [reply_to(task, value) for task in tasks[20:] for value in (1.0, 2.0)]
    stray = reply_to(instruction(99))  # a task never opened

    told = pushes_at_once(journal, [*twice, *twice, *rivals, stray])

    assert told[:40] == [True] * 40
    recorded = journal.open(tasks).answered
    for i, task in enumerate(tasks[20:]):
        first, second = told[40 + 2 * i], told[41 + 2 * i]
        assert sorted([first is True, second is True]) == [False, True], task.task_id
        loser = second if first is True else first
        assert isinstance(loser, Duplicate), task.task_id
        winner = rivals[2 * i] if first is True else rivals[2 * i + 1]
        assert_same_reply(recorded[task.task_id], winner)
    assert told[-1] is False
    for reply in twice:
        assert_same_reply(recorded[reply.task_id], reply)
    assert replies_on_disk(state) == {reply_file(journal, task) for task in tasks}
    state.close()  # the process dies: nothing is written after this

    after = HubState(tmp_path / "hub")
    try:
        again = Journal(after)
        opened = again.open(tasks)  # a restarted hub reads every one of them back
        assert opened.sent_before == frozenset()
        for task in tasks:
            assert_same_reply(opened.answered[task.task_id], recorded[task.task_id])
        assert pushes_at_once(again, twice) == [True] * 20  # pushed again: there already
        told_again = pushes_at_once(again, [reply_to(task, 3.0) for task in tasks])
        assert all(isinstance(t, Duplicate) for t in told_again)  # at most once, across it
        assert len(replies_on_disk(after)) == len(tasks)
    finally:
        after.close()


class HeldFirstCommit:
    """Holds the journal's first group commit (at its folder fsync) until ``release()``, and
    counts the group commits."""

    def __init__(self, state: HubState, monkeypatch: pytest.MonkeyPatch) -> None:
        self.commits = 0
        self.started, self._released = threading.Event(), threading.Event()
        sync_folders = state.sync_folders

        def held(folders: Iterable[Path]) -> None:
            self.commits += 1
            if self.commits == 1:
                self.started.set()
                assert self._released.wait(TIMEOUT), "the test never released the commit"
            sync_folders(folders)

        monkeypatch.setattr(state, "sync_folders", held)

    def release(self) -> None:
        self._released.set()


def test_replies_that_come_while_a_commit_is_under_way_share_the_next_one(
    state: HubState, journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = HeldFirstCommit(state, monkeypatch)
    tasks = [instruction(node) for node in range(17)]
    journal.open(tasks)
    first = threading.Thread(target=journal.record, args=(reply_to(tasks[0]),))
    first.start()
    assert held.started.wait(TIMEOUT)
    later = threading.Thread(
        target=pushes_at_once, args=(journal, [reply_to(t) for t in tasks[1:]])
    )
    later.start()
    poll(lambda: len(journal._answer._waiting) == 16)  # written, and waiting for the commit

    held.release()
    first.join(TIMEOUT)
    later.join(TIMEOUT)

    assert held.commits == 2  # 17 replies, two folder fsyncs and two transactions
    assert all(has_reply(journal, task) for task in tasks)


def test_a_commit_the_disk_refuses_fails_every_reply_in_it_and_keeps_none_of_their_files(
    state: HubState, journal: Journal, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = HeldFirstCommit(state, monkeypatch)
    tasks = [instruction(node) for node in range(5)]
    journal.open(tasks)
    first = threading.Thread(target=journal.record, args=(reply_to(tasks[0]),))
    first.start()
    assert held.started.wait(TIMEOUT)
    told: list[list[bool | PollinateError]] = []
    later = threading.Thread(
        target=lambda: told.append(pushes_at_once(journal, [reply_to(t) for t in tasks[1:]]))
    )
    later.start()
    poll(lambda: len(journal._answer._waiting) == 4)
    refused = state.storage_error(OSError(28, "No space left on device"))
    real = iter([state.transaction])  # the first commit's goes through, the next is refused

    def transaction() -> AbstractContextManager[sqlite3.Connection]:
        if (begin := next(real, None)) is None:
            raise refused
        return begin()

    monkeypatch.setattr(state, "transaction", transaction)

    held.release()
    first.join(TIMEOUT)
    later.join(TIMEOUT)

    assert has_reply(journal, tasks[0])  # committed before the disk filled
    assert len(told[0]) == 4 and all(t is refused for t in told[0])
    assert not any(has_reply(journal, task) for task in tasks[1:])
    assert replies_on_disk(state) == {reply_file(journal, tasks[0])}


def poll(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.001)


# --- open(): what a resumed round gets back ----------------------------------------------------


def test_open_hands_back_recorded_replies_and_names_unanswered_tasks_but_not_new_ones(
    journal: Journal,
) -> None:
    answered, unanswered, new = instruction(1), instruction(2), instruction(3)
    assert journal.open([answered, unanswered]) == Opened()  # nothing was sent before
    reply = reply_to(answered, 4.5)
    journal.record(reply)

    opened = journal.open([answered, unanswered, new])  # the round, sent again after a restart

    assert list(opened.answered) == [answered.task_id]
    assert_same_reply(opened.answered[answered.task_id], reply)
    assert opened.sent_before == {unanswered.task_id}
    assert journal.task(new.task_id) is not None  # noted as sent now
    assert journal.open([new]).sent_before == {new.task_id}


@pytest.mark.parametrize(
    "damage",
    [
        lambda path: path.write_bytes(b"not a wire message"),
        lambda path: path.write_bytes(path.read_bytes()[:40]),
        lambda path: path.write_bytes(b""),
        lambda path: path.unlink(),
    ],
    ids=["garbage", "torn", "empty", "missing"],
)
def test_a_recorded_reply_that_cannot_be_read_is_asked_for_again(
    state: HubState, journal: Journal, damage: Callable[[Path], object]
) -> None:
    task = instruction(1)
    journal.open([task])
    journal.record(reply_to(task, 1.0))
    damage(reply_file(journal, task))

    assert journal.open([task]) == Opened(sent_before=frozenset({task.task_id}))

    assert not has_reply(journal, task)  # reopened: a reply is welcome again
    again = reply_to(task, 2.0)
    assert journal.record(again) is True
    assert_same_reply(journal.open([task]).answered[task.task_id], again)


def test_closing_unanswered_tasks_keeps_the_answered_ones(journal: Journal) -> None:
    answered, unanswered = instruction(1), instruction(2)
    journal.open([answered, unanswered])
    journal.record(reply_to(answered))

    journal.close_unanswered([answered.task_id, unanswered.task_id])

    assert has_reply(journal, answered)
    assert journal.task(unanswered.task_id) is None
    assert journal.record(reply_to(unanswered)) is False  # its round ended


# --- a run waiting for its disk ------------------------------------------------------------------


def test_a_reply_the_disk_refuses_is_not_recorded_and_pauses_its_run_until_the_disk_takes_writes(
    state: HubState, journal: Journal
) -> None:
    task = instruction(1)
    journal.open([task])
    run_dir = state.data_dir / "runs" / "r"
    run_dir.mkdir(parents=True)
    (run_dir / "replies").write_text("a file where the replies' folder goes")  # writes fail
    (state.data_dir / "writable").mkdir()  # and so does the probe of the data dir

    with pytest.raises(StorageError, match="cannot write to its data dir"):
        journal.record(reply_to(task))

    assert not has_reply(journal, task)
    problem = journal.unrecorded("r")
    assert "cannot write to its data dir" in problem
    assert journal.unrecorded("r") == problem  # still refused: still paused
    assert journal.unrecorded("other") == ""  # other runs are not paused by it

    (state.data_dir / "writable").rmdir()  # the disk takes writes again (replies: not yet)

    assert journal.unrecorded("r") == ""  # no new reply needed to find out
    assert not has_reply(journal, task)  # the node pushes it again


# --- checkpoints -------------------------------------------------------------------------------


def checkpoint(rnd: int, rounds: list[RoundRecord] | None = None) -> Checkpoint:
    return Checkpoint(
        rnd,
        Arrays({"w": np.full((2, 3), rnd, np.float32), "conv/b": np.arange(3) + rnd}),
        Arrays({"m/w": np.full((2, 3), 0.1 * rnd), "v/w": np.full((2, 3), 0.01 * rnd)}),
        History(rounds or []),
    )


def record(rnd: int, replies: int | None = None) -> RoundRecord:
    return RoundRecord(
        round=rnd, replies=rnd + 1 if replies is None else replies, fit={"acc": rnd / 10}
    )


def saved_rounds(journal: Journal, run: str, last: int) -> None:
    for rnd in range(last + 1):
        journal.save(run, checkpoint(rnd), record(rnd))


def test_a_run_without_a_checkpoint_loads_none(journal: Journal) -> None:
    assert journal.load("r") is None


def test_a_saved_checkpoint_loads_with_its_arrays_state_and_history(journal: Journal) -> None:
    saved_rounds(journal, "r", 2)

    loaded = journal.load("r")

    assert loaded is not None and loaded.round == 2
    expected = checkpoint(2)
    for got, want in [
        (loaded.arrays, expected.arrays),
        (loaded.strategy_state, expected.strategy_state),
    ]:
        assert list(got) == list(want)
        for name in want:
            assert got[name].dtype == want[name].dtype
            np.testing.assert_array_equal(got[name], want[name])
    assert loaded.history.rounds == [record(0), record(1), record(2)]


def test_a_checkpoint_larger_than_a_node_may_send_saves_and_loads(
    state: HubState, journal: Journal
) -> None:
    # 5,000 layers and FedAdam's two moments of each: a header over the wire's default limit
    names = [f"encoder.layers.{i:04d}.attention.query.weight" for i in range(5_000)]
    model = Arrays({n: np.full((2, 2), i, np.float32) for i, n in enumerate(names)})
    moments = Arrays(
        {f"{m}/{n}": np.full((2, 2), i / 10, np.float32) for m in "mv" for i, n in enumerate(names)}
    )
    journal.save("r", Checkpoint(3, model, moments), record(3))
    found = journal._checkpoint("r")
    assert found is not None
    with pytest.raises(WireError, match="max_header_bytes"):  # what a node's message may be
        wire.decode(Path(found[1]).read_bytes())

    loaded = journal.load("r")

    assert loaded is not None and loaded.round == 3
    for got, want in [(loaded.arrays, model), (loaded.strategy_state, moments)]:
        assert list(got) == list(want)
        for name in [*list(want)[:3], *list(want)[-3:]]:
            np.testing.assert_array_equal(got[name], want[name])
    assert loaded.history.rounds == [record(3)]


def test_the_history_has_each_round_once_and_the_later_line_of_a_round_wins(
    state: HubState, journal: Journal
) -> None:
    saved_rounds(journal, "r", 1)
    state.append_log("r", "round", json.dumps(record(1, replies=9).to_dict()))  # written twice
    state.append_log("r", "status", "a line of another kind")
    journal.save("r", checkpoint(2), record(2))

    loaded = journal.load("r")

    assert loaded is not None
    assert [r.round for r in loaded.history.rounds] == [0, 1, 2]
    assert loaded.history.rounds[1].replies == 9


def test_the_history_ends_at_the_checkpoint_round(state: HubState, journal: Journal) -> None:
    saved_rounds(journal, "r", 1)
    state.append_log("r", "round", json.dumps(record(2).to_dict()))  # no checkpoint behind it
    loaded = journal.load("r")
    assert loaded is not None and loaded.round == 1
    assert [r.round for r in loaded.history.rounds] == [0, 1]


def test_the_history_is_per_run(journal: Journal) -> None:
    saved_rounds(journal, "a", 2)
    saved_rounds(journal, "b", 0)
    b = journal.load("b")
    assert b is not None and [r.round for r in b.history.rounds] == [0]


def test_every_rounds_checkpoint_is_kept_and_its_model_read_back(
    state: HubState, journal: Journal
) -> None:
    run_dir = state.data_dir / "runs" / "r"
    journal.save("r", checkpoint(0), record(0))
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoint-000000.pln"]
    journal.save("r", checkpoint(1), record(1))
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "checkpoint-000000.pln",
        "checkpoint-000001.pln",
    ]
    assert journal.model("r") == (1, checkpoint(1).arrays)
    assert journal.model("r", 0) == (0, checkpoint(0).arrays)
    loaded = journal.load("r")  # a resume reads the newest
    assert loaded is not None and loaded.round == 1
    assert state.run("r") is None  # the journal does not invent runs


def test_saving_round_k_deletes_the_replies_of_rounds_up_to_k_and_keeps_later_ones(
    state: HubState, journal: Journal
) -> None:
    round_one = [instruction(1, rnd=1), instruction(2, rnd=1, kind="evaluate")]
    round_two = [instruction(1, rnd=2)]
    journal.open([*round_one, *round_two])
    for task in [*round_one, *round_two]:
        journal.record(reply_to(task))
    round_one_files = {reply_file(journal, t) for t in round_one}
    round_two_file = reply_file(journal, round_two[0])

    journal.save("r", checkpoint(1), record(1))
    journal.removed()  # they are deleted beside the run, not in its way

    assert replies_on_disk(state) == {round_two_file}
    assert not any(path.exists() for path in round_one_files)
    assert all(journal.task(t.task_id) is None for t in round_one)
    assert has_reply(journal, round_two[0])
    assert_same_reply(
        journal.open(round_two).answered[round_two[0].task_id], reply_to(round_two[0])
    )


def test_forgetting_a_run_deletes_its_replies_and_keeps_its_last_checkpoint(
    state: HubState, journal: Journal
) -> None:
    mine, other = instruction(1, rnd=3), instruction(1, rnd=3, run="other")
    journal.open([mine, other])
    journal.record(reply_to(mine))
    journal.record(reply_to(other))
    saved_rounds(journal, "r", 2)

    journal.forget("r")
    journal.removed()

    assert replies_on_disk(state, "r") == set()
    assert journal.task(mine.task_id) is None
    assert has_reply(journal, other) and len(replies_on_disk(state, "other")) == 1
    loaded = journal.load("r")
    assert loaded is not None and loaded.round == 2
    assert (state.data_dir / "runs" / "r" / "checkpoint-000002.pln").exists()


# --- across a crash ----------------------------------------------------------------------------


def test_a_hub_restarted_on_the_data_dir_sees_everything_that_was_recorded(
    tmp_path: Path,
) -> None:
    before = HubState(tmp_path / "hub")
    journal = Journal(before)
    saved_rounds(journal, "r", 1)
    answered, unanswered = instruction(1, rnd=2), instruction(2, rnd=2)
    journal.open([answered, unanswered])
    reply = reply_to(answered, 3.0)
    journal.record(reply)
    before.close()  # the process dies; nothing is written after this

    after = HubState(tmp_path / "hub")
    try:
        again = Journal(after)
        assert has_reply(again, answered) and not has_reply(again, unanswered)
        with pytest.raises(Duplicate, match="duplicate"):  # answered already: not again
            again.record(reply_to(answered, 9.0))
        assert again.record(reply) is True  # the same reply, pushed again: it is there
        assert len(replies_on_disk(after)) == 1  # at most once, across restarts

        loaded = again.load("r")
        assert loaded is not None and loaded.round == 1
        assert [r.round for r in loaded.history.rounds] == [0, 1]
        np.testing.assert_array_equal(loaded.arrays["w"], checkpoint(1).arrays["w"])

        opened = again.open([answered, unanswered])
        assert_same_reply(opened.answered[answered.task_id], reply)
        assert opened.sent_before == {unanswered.task_id}
    finally:
        after.close()


def test_the_sweep_deletes_what_a_crash_left_and_keeps_what_the_database_points_at(
    tmp_path: Path,
) -> None:
    from pollinate.hub.state import HubState as State

    state = State(tmp_path / "hub")
    journal = Journal(state)
    task = Message("fit", task_id="r:1:fit:1", run_id="r", round=1, node_id=1)
    journal.open([task])
    assert journal.record(task.reply(num_examples=1))
    kept = [Path(p) for p in (journal.task(task.task_id).reply,) if p]  # type: ignore[union-attr]
    replies = kept[0].parent
    leftovers = [
        replies / "orphan.pln",
        state.data_dir / "runs" / "r" / "checkpoint-000007.pln",
        state.data_dir / "blobs" / "ab" / "abc.123.456.partial",
    ]
    for path in leftovers:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"left by a crash")
    unpacking = state.data_dir / "apps" / "digest" / "partial-1234"
    unpacking.mkdir(parents=True)

    assert journal.sweep() == 3

    assert all(not p.exists() for p in leftovers) and not unpacking.exists()
    assert kept[0].exists()
    state.close()


def test_the_sweep_keeps_earlier_rounds_checkpoints_and_deletes_one_written_after_the_newest(
    state: HubState, journal: Journal
) -> None:
    saved_rounds(journal, "r", 2)
    run_dir = state.data_dir / "runs" / "r"
    (run_dir / "checkpoint-000003.pln").write_bytes(b"written, then the hub died")

    assert journal.sweep() == 1

    assert sorted(p.name for p in run_dir.iterdir()) == [
        f"checkpoint-{r:06d}.pln" for r in range(3)
    ]


def test_the_sweep_deletes_app_archives_no_run_was_recorded_with_and_keeps_the_rest(
    state: HubState, journal: Journal
) -> None:
    used, unused = state.put_blob(b"an app a run uses"), state.put_blob(b"a submission cut short")
    for digest in (used, unused):
        (state.data_dir / "apps" / digest / "app").mkdir(parents=True)
        (state.data_dir / "apps" / digest / "app" / "pyproject.toml").write_text("")
    state.add_run(
        RunRow("r", "app", "h" * 64, used, {}, 1, 0, RunStatus.RUNNING, 0, 0.0, ""),
        first_log=("status", "submitted"),
    )

    assert journal.sweep() == 1

    assert state.blob_path(used).is_file() and (state.data_dir / "apps" / used).is_dir()
    assert not state.blob_path(unused).exists()
    assert not (state.data_dir / "apps" / unused).exists()


def test_while_the_disk_refuses_replies_the_journal_says_so_until_it_takes_writes(
    state: HubState, journal: Journal
) -> None:
    task = instruction(1)
    journal.open([task])
    replies = state.data_dir / "runs" / task.run_id / "replies"
    replies.parent.mkdir(parents=True, exist_ok=True)
    replies.write_bytes(b"")  # a file where the folder goes: every reply write fails
    probe = state.data_dir / "writable"
    probe.mkdir()  # and so does the probe
    with pytest.raises(StorageError):
        journal.record(reply_to(task))
    assert journal.refusing().startswith("the hub cannot write to its data dir")

    replies.unlink()
    probe.rmdir()
    assert journal.refusing() == ""
    assert journal.record(reply_to(task))
