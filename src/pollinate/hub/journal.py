"""What a run needs to survive a crash of its hub: checkpoints, and its round's replies.

At the end of every round the run's checkpoint (global arrays and strategy state; the history
is the run's log) is written to ``runs/RUN/checkpoint-ROUND.pln`` and committed together with
the round's log line. Every round's checkpoint is kept, so any round's model can be pulled
(``model``; a round costs the model and the strategy's state on disk). Between
checkpoints, every reply the hub accepts is written to
``runs/RUN/replies/`` and noted against its task before the node hears "accepted"; replies
recorded at the same time share the folder's fsync and the transaction (a group commit:
``group_commit.py``), so a round's replies do not queue for the disk one by one.

Invariants:
- a reply is recorded at most once per task id (the database says who was first), also
  across restarts, so it is aggregated at most once per round;
- a reply a node was told was accepted is on disk: a restarted hub hands it back when the
  resumed round asks for its task again, and the node does not train twice;
- a checkpoint file is complete before the database points at it;
- a checkpoint file of a round after the one the database points at is a crash's leftover
  (the round is run again); those up to it are kept.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from pollinate.errors import PollinateError, StorageError, WireError
from pollinate.hub.atomic_file import PARTIAL_SUFFIX
from pollinate.hub.fleet import Duplicate
from pollinate.hub.group_commit import GroupCommit
from pollinate.hub.reply_file import ReplyFile
from pollinate.hub.state import HubState, TaskRow
from pollinate.loop import checkpoint as checkpoints
from pollinate.loop.checkpoint import Checkpoint
from pollinate.loop.history import History, RoundRecord
from pollinate.records import Arrays, Message
from pollinate.wire import decode, iter_encode


class NoModel(PollinateError, LookupError):
    """The hub holds no model of that run at that round (no such run, not yet, or not kept)."""


@dataclass(frozen=True)
class Opened:
    """What ``Journal.open`` found of a stage's tasks from before a hub restart."""

    answered: dict[str, Message] = field(default_factory=dict)
    """Replies recorded before, by task id: handed back, not asked for again."""
    sent_before: frozenset[str] = frozenset()
    """Tasks sent before and unanswered: they may be in their node's hands."""


class Journal:
    """Checkpoints and replies of the hub's runs, in its state database and data dir."""

    def __init__(self, state: HubState) -> None:
        self.state = state
        self.lock = threading.Lock()
        """Held while a stage's tasks are opened and queued, and while a reply to a task that
        is not queued in this process is recorded, so that the two never interleave."""
        self._unrecorded: dict[str, str] = {}
        """By run id: why the last reply to it could not be recorded (cleared by the next
        one that is). A run waiting for replies learns here that it waits for its disk."""
        self._removals = ThreadPoolExecutor(1, thread_name_prefix="pollinate-remove")
        self._answer = GroupCommit(self._answer_tasks)
        """Notes a reply against its task: replies recorded at once share the folder's fsync
        and the transaction (``group_commit.py``)."""

    # --- tasks and their replies ---------------------------------------------------------

    def open(self, instructions: Sequence[Message]) -> Opened:
        """Note ``instructions`` as sent; say which were sent before (a resumed round)."""
        rows = self._tasks([m.task_id for m in instructions])
        self._open_tasks([(m.task_id, m.run_id, m.round, m.node_id) for m in instructions])
        answered, sent_before = {}, set()
        for row in rows:
            reply = self._read_reply(row.task_id, row.reply) if row.reply else None
            if reply is None:
                sent_before.add(row.task_id)
            else:
                answered[row.task_id] = reply
        return Opened(answered, frozenset(sent_before))

    def _read_reply(self, task_id: str, path: str) -> Message | None:
        try:
            return decode(Path(path).read_bytes())
        except (OSError, WireError):
            # a recorded reply that cannot be read is one never received: ask again
            self._reopen_task(task_id)
            return None

    def record(self, reply: Message) -> bool:
        """Put ``reply`` on disk and note it against its task. True if the task has this
        reply now (recorded by this call or an earlier push of it); False if the task is
        unknown or closed (its stage ended). Duplicate if the task has another reply.
        StorageError if the disk refuses."""
        task = self.task(reply.task_id)
        if task is None:
            return False
        if task.reply is not None:
            return _recorded_is(task.reply, iter_encode(reply), reply.task_id)
        path = self._reply_path(reply)  # its own file: pushes of one reply never share one
        with self._noting_failure(reply.run_id, path):
            # the file's bytes in this thread: the fsyncs of concurrent pushes overlap
            self.state.write_file_bytes(path, iter_encode(reply))
        return self._note(reply, path, lambda: iter_encode(reply))

    def reply_file(self, head: Message, size: int) -> ReplyFile:
        """A new file for the ``size`` bytes of the reply whose header is ``head``, to be
        written as they arrive (``reply_file.py``) and then recorded (``record_file``)."""
        path = self._reply_path(head)
        return ReplyFile(
            lambda: self.state.new_file(path), size, lambda exc: self._failed(head.run_id, exc)
        )

    def record_file(self, reply: Message, path: Path) -> bool:
        """``record`` for a reply whose bytes are on disk in ``path`` already (a finished
        ``reply_file``); the file is removed unless it is the one recorded."""
        task = self.task(reply.task_id)
        if task is not None and task.reply is None:
            return self._note(reply, path, lambda: _read(path))
        try:
            return task is not None and _recorded_is(str(task.reply), _read(path), reply.task_id)
        finally:
            _remove(path)

    def _note(
        self, reply: Message, path: Path, pieces: Callable[[], Iterable[bytes | memoryview]]
    ) -> bool:
        """Note the reply in ``path`` against its task; as ``record``."""
        with self._noting_failure(reply.run_id, path):
            answered = self._answer((reply.task_id, path))
        if answered:
            return True
        try:
            task = self.task(reply.task_id)
            if task is None or task.reply is None:
                return False
            return _recorded_is(task.reply, pieces(), reply.task_id)
        finally:
            _remove(path)

    @contextlib.contextmanager
    def _noting_failure(self, run_id: str, path: Path) -> Iterator[None]:
        """A StorageError is noted for the run (``unrecorded``) and leaves no file at
        ``path``; success clears the note."""
        try:
            yield
        except StorageError as exc:
            self._failed(run_id, exc)
            _remove(path)
            raise
        self._unrecorded.pop(run_id, None)

    def _failed(self, run_id: str, exc: StorageError) -> None:
        self._unrecorded[run_id] = str(exc)

    def unrecorded(self, run_id: str) -> str:
        """Why the run's last reply could not be recorded, or "" if it was (or the disk
        takes writes again)."""
        problem = self._unrecorded.get(run_id, "")
        if problem:
            try:
                self.state.check_writable()
            except StorageError:
                return problem
            self._unrecorded.pop(run_id, None)
        return ""

    def refusing(self) -> str:
        """Why replies cannot be recorded now, or "": a node told at once, before it sends
        its arrays, need not upload them again and again while the disk is full."""
        for run_id in list(self._unrecorded):
            if problem := self.unrecorded(run_id):
                return problem
        return ""

    def close_unanswered(self, task_ids: Sequence[str]) -> None:
        self._close_unanswered(task_ids)

    # --- checkpoints -----------------------------------------------------------------------

    def save(self, run_id: str, checkpoint: Checkpoint, record: RoundRecord) -> None:
        """Record the run's state after ``checkpoint.round`` and its round in the run's log,
        at once; then delete the replies it makes useless (earlier checkpoints stay)."""
        path = self._checkpoint_path(run_id, checkpoint.round)
        self.state.write_file(path, checkpoints.iter_encode(checkpoint))
        line = ("round", json.dumps(record.to_dict()))
        _, replies = self._save_checkpoint(run_id, checkpoint.round, str(path), line)
        self._remove_later(replies)

    def load(self, run_id: str) -> Checkpoint | None:
        """The run's newest checkpoint with its history, or None if it has none yet."""
        found = self._checkpoint(run_id)
        if found is None:
            return None
        round, path = found
        history = History()
        for row in self.state.log_after(run_id, 0):
            if row.kind == "round":
                record = RoundRecord.from_dict(json.loads(row.text))
                if record.round <= round:
                    history.rounds = [r for r in history.rounds if r.round < record.round]
                    history.rounds.append(record)
        # read, not mapped: the run outlives this file (the next checkpoint deletes it)
        return checkpoints.decode(Path(path).read_bytes(), history)

    def model(self, run_id: str, round: int | None = None) -> tuple[int, Arrays]:
        """The run's global model at the end of ``round`` (default: its newest checkpoint's
        round), with that round; NoModel, saying which rounds there are, if there is none."""
        found = self._checkpoint(run_id)
        if found is None:
            raise NoModel(f"run {run_id!r} has no model yet: no round of it has ended")
        newest, newest_path = found
        wanted = newest if round is None else round
        if wanted > newest:
            raise NoModel(
                f"run {run_id!r} has no round {wanted} yet: its newest model is of round "
                f"{newest}.\nHint: leave out the round for the newest, or wait for round {wanted}"
            )
        path = Path(newest_path) if wanted == newest else self._checkpoint_path(run_id, wanted)
        try:  # the whole file: the model must outlive it (nothing deletes a kept round today)
            data = path.read_bytes()
        except FileNotFoundError:
            raise NoModel(
                f"the hub kept no model of run {run_id!r} at round {wanted} (a run of an "
                f"older hub kept only its newest).\nHint: pull round {newest}, its newest"
            ) from None
        checkpoint = checkpoints.decode(data)
        return checkpoint.round, checkpoint.arrays

    def forget(self, run_id: str) -> None:
        """The run ended: its replies are of no more use (its last checkpoint stays)."""
        self._remove_later(self._forget_run_tasks(run_id))

    def _remove_later(self, paths: Iterable[str]) -> None:
        """Delete files of no more use beside the run, not in its way: deleting a round's
        replies frees them from the page cache, which took 0.3 s for ten 40 MB replies here.
        A crash before they are gone leaves them to ``sweep``."""
        for path in paths:
            self._removals.submit(_remove, Path(path))

    def removed(self) -> None:
        """Wait until the files let go of so far are deleted."""
        self._removals.submit(lambda: None).result()

    def sweep(self) -> int:
        """Delete what a crash left behind: half-written files, replies and checkpoints the
        database does not point at, half-unpacked apps, and app archives (stored and
        unpacked) that no run was recorded with (a submission cut short). Call only while
        holding the data dir's lock (no other hub writes there, no submission is under way).
        Returns how many files were deleted."""
        with self.state.reading() as db:
            kept = {row[0] for row in db.execute("SELECT reply FROM tasks WHERE reply NOT NULL")}
            kept |= {row[0] for row in db.execute("SELECT path FROM checkpoints")}
            rounds = dict(db.execute("SELECT run_id, round FROM checkpoints").fetchall())
            archives = {row[0] for row in db.execute("SELECT archive FROM runs")}
        root = self.state.data_dir
        stale = [p for p in root.rglob(f"*{PARTIAL_SUFFIX}") if p.is_file()]
        stale += [p for p in root.glob("runs/*/replies/*.pln") if str(p) not in kept]
        stale += [
            p
            for p in root.glob("runs/*/checkpoint-*.pln")
            if str(p) not in kept and not _earlier_round(p, rounds)
        ]
        stale += [p for p in root.glob("blobs/*/*") if p.is_file() and p.name not in archives]
        stale = list(dict.fromkeys(stale))  # a half-written archive is found twice
        for path in stale:
            _remove(path)
        for partial in root.glob("apps/*/partial-*"):
            shutil.rmtree(partial, ignore_errors=True)
        for unpacked in root.glob("apps/*"):
            if unpacked.is_dir() and unpacked.name not in archives:
                shutil.rmtree(unpacked, ignore_errors=True)
        return len(stale)

    # --- the tasks and checkpoints tables (this module gives them their meaning) -------

    def _open_tasks(self, tasks: Sequence[tuple[str, str, int, int]]) -> None:
        """Record ``(task_id, run_id, round, node_id)`` tasks as sent; known ones stay."""
        with self.state.transaction() as db:
            db.executemany(
                "INSERT OR IGNORE INTO tasks (task_id, run_id, round, node_id) VALUES (?,?,?,?)",
                tasks,
            )

    def task(self, task_id: str) -> TaskRow | None:
        """The task as the database knows it, or None."""
        with self.state.reading() as db:
            row = db.execute("SELECT * FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        return None if row is None else TaskRow(*row)

    def _tasks(self, task_ids: Sequence[str]) -> list[TaskRow]:
        with self.state.reading() as db:
            rows = [
                db.execute("SELECT * FROM tasks WHERE task_id = ?", (t,)).fetchone()
                for t in task_ids
            ]
        return [TaskRow(*row) for row in rows if row is not None]

    def _answer_tasks(self, answers: list[tuple[str, Path]]) -> list[bool]:
        """Record the replies of open tasks, ``(task_id, reply file)`` whose bytes are on
        disk, in one transaction, their files' names on disk first. For each, False if its
        task is unknown or answered (also by one before it in ``answers``)."""
        self.state.sync_folders({path.parent for _, path in answers})
        answer = "UPDATE tasks SET reply = ? WHERE task_id = ? AND reply IS NULL"
        with self.state.transaction() as db:
            return [db.execute(answer, (str(path), task)).rowcount == 1 for task, path in answers]

    def _reopen_task(self, task_id: str) -> None:
        with self.state.transaction() as db:
            db.execute("UPDATE tasks SET reply = NULL WHERE task_id = ?", (task_id,))

    def _close_unanswered(self, task_ids: Sequence[str]) -> None:
        with self.state.transaction() as db:
            db.executemany(
                "DELETE FROM tasks WHERE task_id = ? AND reply IS NULL",
                [(t,) for t in task_ids],
            )

    def _save_checkpoint(
        self, run_id: str, round: int, path: str, log: tuple[str, str] | None
    ) -> tuple[str | None, list[str]]:
        """Make ``path`` the run's checkpoint at ``round``, note the round (and ``log``, a
        (kind, text) entry) in the same transaction, and forget the answered tasks of rounds
        up to it (an unanswered one is closed by its stage, or is an asynchronous run's task
        still in flight, whose reply is still wanted). Returns the files no longer needed:
        the previous checkpoint and those replies."""
        with self.state.transaction() as db:
            old = db.execute("SELECT path FROM checkpoints WHERE run_id = ?", (run_id,)).fetchone()
            db.execute(
                "INSERT INTO checkpoints VALUES (?, ?, ?) ON CONFLICT(run_id) DO UPDATE "
                "SET round = excluded.round, path = excluded.path",
                (run_id, round, path),
            )
            db.execute("UPDATE runs SET round = ? WHERE run_id = ?", (round, run_id))
            if log is not None:
                db.execute(
                    "INSERT INTO log (run_id, time, kind, text) VALUES (?, ?, ?, ?)",
                    (run_id, time.time(), *log),
                )
            replies = self._forget_tasks(db, run_id, round)
        return (old[0] if old and old[0] != path else None), replies

    def _forget_run_tasks(self, run_id: str) -> list[str]:
        """Forget all of a run's tasks (it ended); returns the reply files to delete."""
        with self.state.transaction() as db:
            return self._forget_tasks(db, run_id, None)

    def _forget_tasks(self, db: sqlite3.Connection, run_id: str, up_to: int | None) -> list[str]:
        where = "run_id = ?" + ("" if up_to is None else " AND round <= ? AND reply IS NOT NULL")
        params = (run_id,) if up_to is None else (run_id, up_to)
        rows = db.execute(f"SELECT reply FROM tasks WHERE {where}", params).fetchall()
        db.execute(f"DELETE FROM tasks WHERE {where}", params)
        return [row[0] for row in rows if row[0]]

    def _checkpoint(self, run_id: str) -> tuple[int, str] | None:
        """``(round, path)`` of the run's newest checkpoint, if it has one."""
        with self.state.reading() as db:
            row = db.execute(
                "SELECT round, path FROM checkpoints WHERE run_id = ?", (run_id,)
            ).fetchone()
        return None if row is None else (int(row[0]), str(row[1]))

    # --- files -----------------------------------------------------------------------------

    def _run_dir(self, run_id: str) -> Path:
        return self.state.data_dir / "runs" / run_id

    def _checkpoint_path(self, run_id: str, round: int) -> Path:
        return self._run_dir(run_id) / f"checkpoint-{round:06d}.pln"

    def _reply_path(self, reply: Message) -> Path:
        name = hashlib.sha256(reply.task_id.encode()).hexdigest()[:32]
        return self._run_dir(reply.run_id) / "replies" / f"{name}-{secrets.token_hex(4)}.pln"


def _recorded_is(path: str, pieces: Iterable[bytes | memoryview], task_id: str) -> bool:
    """True if the reply recorded at ``path`` has the bytes ``pieces`` (a push again of the
    one recorded), Duplicate if it is another. A record or push that cannot be read is not
    held against the push: the task is asked for again when its round resumes (``open``)."""
    try:
        with open(path, "rb") as recorded:
            same = all(recorded.read(len(piece)) == piece for piece in pieces)
            same = same and recorded.read(1) == b""
    except OSError:
        return True
    if not same:
        raise Duplicate(
            f"duplicate reply to task {task_id!r}: it has another reply already, which "
            "stands; this one is discarded (a node answers each task once)"
        )
    return True


def _read(path: Path, piece: int = 1 << 20) -> Iterator[bytes]:
    """The bytes of ``path`` in pieces."""
    with path.open("rb") as file:
        while data := file.read(piece):
            yield data


def _earlier_round(path: Path, rounds: dict[str, int]) -> bool:
    """Whether ``path`` is the checkpoint of a round before its run's newest (kept)."""
    _, _, number = path.stem.partition("-")
    newest = rounds.get(path.parent.name)
    return newest is not None and number.isdigit() and int(number) < newest


def _remove(path: Path) -> None:
    """Delete a file no longer needed; a disk that refuses leaves it, which costs space only."""
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)
