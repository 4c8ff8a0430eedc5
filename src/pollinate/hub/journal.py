"""What a run needs to survive a crash of its hub: checkpoints, and its round's replies.

At the end of every round the run's checkpoint (global arrays and strategy state; the history
is the run's log) is written to ``runs/RUN/checkpoint-ROUND.pln`` and committed together with
the round's log line. Between checkpoints, every reply the hub accepts is written to
``runs/RUN/replies/`` and noted against its task before the node hears "accepted".

Invariants:
- a reply is recorded at most once per task id (the database says who was first), also
  across restarts, so it is aggregated at most once per round;
- a reply a node was told was accepted is on disk: a restarted hub hands it back when the
  resumed round asks for its task again, and the node does not train twice;
- a checkpoint file is complete before the database points at it.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import threading
from collections.abc import Sequence
from pathlib import Path

from pollinate import wire
from pollinate.errors import StorageError, WireError
from pollinate.hub.state import HubState
from pollinate.records import Message
from pollinate.server import checkpoint as checkpoints
from pollinate.server.checkpoint import Checkpoint
from pollinate.server.history import History, RoundRecord


class Journal:
    """Checkpoints and replies of the hub's runs, in its state database and data dir."""

    def __init__(self, state: HubState) -> None:
        self.state = state
        self._recording = threading.Lock()
        self._unrecorded: dict[str, str] = {}
        """By run id: why the last reply to it could not be recorded (cleared by the next
        one that is). A run waiting for replies learns here that it waits for its disk."""

    # --- tasks and their replies ---------------------------------------------------------

    def open(self, instructions: Sequence[Message]) -> dict[str, Message | None]:
        """Note ``instructions`` as sent. Returns, by task id, those that were sent before
        (a round resumed after a restart): with their recorded reply, or None if unanswered."""
        known: dict[str, Message | None] = {
            row.task_id: None for row in self.state.tasks([m.task_id for m in instructions])
        }
        self.state.open_tasks([(m.task_id, m.run_id, m.round, m.node_id) for m in instructions])
        for row in self.state.tasks(list(known)):
            if row.reply is None:
                continue
            try:
                known[row.task_id] = wire.decode(_map(Path(row.reply)))
            except (OSError, WireError):
                # a recorded reply that cannot be read is one never received: ask again
                self.state.reopen_task(row.task_id)
        return known

    def record(self, reply: Message) -> bool:
        """Put ``reply`` on disk and note it against its task; False (and nothing kept) if
        the task already has a reply. StorageError if the disk refuses."""
        path = self._reply_path(reply)
        with self._recording:  # two pushes of one reply must not write one file together
            task = self.state.task(reply.task_id)
            if task is None or task.reply is not None:
                return False
            try:
                self.state.write_file(path, wire.iter_encode(reply))
                answered = self.state.answer_task(reply.task_id, str(path))
            except StorageError as exc:
                self._unrecorded[reply.run_id] = str(exc)
                raise
            self._unrecorded.pop(reply.run_id, None)
            if not answered:
                path.unlink(missing_ok=True)
                return False
        return True

    def unrecorded(self, run_id: str) -> str:
        """Why the run's last reply could not be recorded, or "" if it was."""
        return self._unrecorded.get(run_id, "")

    def recorded(self, task_id: str) -> bool:
        task = self.state.task(task_id)
        return task is not None and task.reply is not None

    def pending(self, task_id: str) -> bool:
        """The task was sent and is waiting for its reply (in the database, not necessarily
        in this process: after a restart its run sends it again)."""
        task = self.state.task(task_id)
        return task is not None and task.reply is None

    def close_unanswered(self, task_ids: Sequence[str]) -> None:
        self.state.close_unanswered(task_ids)

    # --- checkpoints -----------------------------------------------------------------------

    def save(self, run_id: str, checkpoint: Checkpoint, record: RoundRecord) -> None:
        """Record the run's state after ``checkpoint.round`` and its round in the run's log,
        at once; then delete what it replaces."""
        path = self._run_dir(run_id) / f"checkpoint-{checkpoint.round:06d}.pln"
        self.state.write_file(path, checkpoints.iter_encode(checkpoint))
        line = ("round", json.dumps(record.to_dict()))
        old, replies = self.state.save_checkpoint(run_id, checkpoint.round, str(path), line)
        for stale in [old, *replies]:
            if stale:
                Path(stale).unlink(missing_ok=True)

    def load(self, run_id: str) -> Checkpoint | None:
        """The run's newest checkpoint with its history, or None if it has none yet."""
        found = self.state.checkpoint(run_id)
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
        data = _map(Path(path))
        return checkpoints.decode(data, history)

    def forget(self, run_id: str) -> None:
        """The run ended: its replies are of no more use (its last checkpoint stays)."""
        for path in self.state.forget_tasks(run_id):
            Path(path).unlink(missing_ok=True)

    # --- files -----------------------------------------------------------------------------

    def _run_dir(self, run_id: str) -> Path:
        return self.state.data_dir / "runs" / run_id

    def _reply_path(self, reply: Message) -> Path:
        name = hashlib.sha256(reply.task_id.encode()).hexdigest()[:32]
        return self._run_dir(reply.run_id) / "replies" / f"{name}.pln"


def _map(path: Path) -> memoryview:
    """The file's bytes, mapped read-only: arrays decode as views, not copies."""
    with path.open("rb") as file:
        if path.stat().st_size == 0:
            return memoryview(b"")
        return memoryview(mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ))
