"""Runs at the hub: an uploaded app run by the run loop in its own process, checkpointed every
round.

The server side of the app (strategy, rounds, centralized evaluation) runs in a run process
(``run_process.py``: sandboxed, memory-bounded), which a thread here serves (``supervisor.py``);
its client side runs at the nodes. The hub never imports an app's code. A run's log (rounds,
warnings, restarts, status changes) is kept in the state database, so ``pollinate log`` can
replay and follow it.

Invariant: a run that was running when its hub stopped (SIGKILL, power loss) is resumed when
a hub starts on the same data dir, from its last completed round, and says so in its log.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import secrets
import shutil
import threading
import time
from collections import Counter
from collections.abc import Iterator

from pollinate.errors import AppError, PollinateError, StorageError
from pollinate.hub.archives import check_archive
from pollinate.hub.events import RunEvents
from pollinate.hub.fleet import Fleet
from pollinate.hub.grid import STORAGE_RETRY_SECONDS, HubGrid, RunStopped
from pollinate.hub.journal import Journal
from pollinate.hub.state import HubState, RunRow, RunStatus
from pollinate.hub.supervisor import Hooks, RunLimits, RunProcess, start_process
from pollinate.loop.checkpoint import Checkpoint
from pollinate.placement import Placement

log = logging.getLogger("pollinate.hub")

CLOSE_SECONDS = 10.0
"""How long a closing hub waits for its run threads to let go of its state."""


class Runs:
    """Starts, resumes, tracks and stops the hub's runs."""

    def __init__(
        self, state: HubState, fleet: Fleet, journal: Journal, limits: RunLimits | None = None
    ) -> None:
        self.state = state
        self.fleet = fleet
        self.journal = journal
        self.limits = limits or RunLimits()
        self._grids: dict[str, HubGrid] = {}
        self._processes: dict[str, RunProcess] = {}
        self._closing = threading.Event()
        self._threads: dict[str, threading.Thread] = {}
        self.changed = threading.Condition()
        self._in_submission: Counter[str] = Counter()  # by archive digest
        self._archives_lock = threading.Lock()
        self.events = RunEvents()  # every run's loop events, for metrics and dashboards

    def submit(
        self,
        archive: bytes,
        declared_hash: str,
        overrides: dict[str, str],
        rounds: int | None,
        seed: int,
        placement: Placement | None = None,
    ) -> str:
        """Unpack and check the app, record the run and start it (``rounds`` None: the app's
        own number) on the nodes its ``placement`` picks (None: every node); AppError if it
        is unusable, StorageError if the hub cannot record it. A refused submission leaves
        nothing on disk (``_discard_unless_used``)."""
        placement = placement or Placement()
        self.state.check_writable()  # the archive may be stored already: nothing new written
        # marked before it is stored: a refused submission of the same bytes must not
        # delete the archive between this one storing it and recording its run
        with self._submitting(hashlib.sha256(archive).hexdigest()) as digest:
            process = None
            try:
                self.state.put_blob(archive)
                actual = self._check_submitted(archive, declared_hash, digest)
                process = self._start_process(digest, overrides)
                run_id = self._record_submitted(
                    process, actual, digest, overrides, rounds, seed, placement
                )
            except BaseException:
                if process is not None:
                    process.end()
                self._discard_unless_used(digest)
                raise
        with self.changed:
            self.changed.notify_all()
        self._start(run_id, process, actual, rounds, seed, None, placement=placement)
        return run_id

    def _check_submitted(self, archive: bytes, declared_hash: str, digest: str) -> str:
        try:
            return check_archive(archive, declared_hash, self.state.data_dir / "apps", digest)
        except OSError as exc:  # unpacking onto a disk that refuses
            raise self.state.storage_error(exc) from exc

    def _start_process(self, digest: str, overrides: dict[str, str]) -> RunProcess:
        """The run's process, its app loaded there (never here); AppError if it cannot be."""
        app_dir = self.state.data_dir / "apps" / digest / "app"
        return start_process(app_dir, overrides, self.state.data_dir, self.limits)

    def _record_submitted(
        self,
        process: RunProcess,
        actual: str,
        digest: str,
        overrides: dict[str, str],
        rounds: int | None,
        seed: int,
        placement: Placement,
    ) -> str:
        run_id = secrets.token_hex(4)
        placed = f", {placement}" if placement else ""
        self.state.add_run(
            RunRow(
                run_id=run_id,
                app=process.name,
                app_hash=actual,
                archive=digest,
                overrides=overrides,
                rounds=rounds,
                seed=seed,
                status=RunStatus.RUNNING,
                round=0,
                created=time.time(),
                detail="",
            ),
            first_log=("status", f"run {run_id} of app {process.name} submitted{placed}"),
            placement=placement,
        )
        return run_id

    @contextlib.contextmanager
    def _submitting(self, digest: str) -> Iterator[str]:
        """Mark the archive ``digest`` as in a submission until it is recorded or refused."""
        with self._archives_lock:
            self._in_submission[digest] += 1
        try:
            yield digest
        finally:
            with self._archives_lock:
                self._in_submission[digest] -= 1
                if not self._in_submission[digest]:
                    del self._in_submission[digest]

    def _discard_unless_used(self, digest: str) -> None:
        """Delete the stored archive ``digest`` and its unpacked app, unless a run was
        recorded with it (running, resumable or ended: a user may look at it) or another
        submission of the same bytes is under way. Best effort: a disk that refuses keeps
        the files, which cost space only."""
        with self._archives_lock:
            if self._in_submission[digest] > 1:
                return
            try:
                if any(row.archive == digest for row in self.state.runs()):
                    return
            except StorageError:
                return  # cannot tell: keep them
            shutil.rmtree(self.state.data_dir / "apps" / digest, ignore_errors=True)
            with contextlib.suppress(OSError):
                self.state.blob_path(digest).unlink(missing_ok=True)

    def resume_all(self) -> None:
        """Resume every run the last hub on this data dir left running (each in a thread:
        one that waits for its disk must not hold up the others, nor the hub's start)."""
        for row in self.state.runs():
            if row.status is RunStatus.RUNNING:
                thread = threading.Thread(
                    target=self._resume, args=(row,), name=f"resume-{row.run_id}", daemon=True
                )
                self._threads[thread.name] = thread
                thread.start()

    def _resume(self, row: RunRow) -> None:
        """Load the run's app and checkpoint and start it; a disk that fails meanwhile is
        waited for (the run stays running), an app that cannot load fails the run."""
        warned = False
        while True:
            try:
                checkpoint = self._reload(row)
                placement = self.state.run_placement(row.run_id)
                process = self._start_process(row.archive, row.overrides)
                break
            except (StorageError, OSError) as exc:
                if not _transient(exc):
                    return self._cannot_resume(row, exc)
                if not warned:
                    log.error("run %s waits for its data dir to resume: %s", row.run_id, exc)
                warned = True
                time.sleep(STORAGE_RETRY_SECONDS)
            except PollinateError as exc:  # a stored placement that no longer parses, too
                return self._cannot_resume(row, exc)
        restart = 1 + sum(e.kind == "resume" for e in self.state.log_after(row.run_id, 0))
        where = "from the start" if checkpoint is None else f"after round {checkpoint.round}"
        note = f"hub restarted (restart {restart}): run {row.run_id} resumes {where}"
        self._start(
            row.run_id, process, row.app_hash, row.rounds, row.seed, checkpoint, note, placement
        )

    def _reload(self, row: RunRow) -> Checkpoint | None:
        archive = self.state.blob_path(row.archive).read_bytes()
        apps = self.state.data_dir / "apps"
        try:
            check_archive(archive, row.app_hash, apps, row.archive)
        except AppError:
            # unpacked files are not synced (the archive is): after a crash of the machine or
            # a disk that failed, they may be empty; unpack them again
            shutil.rmtree(apps / row.archive, ignore_errors=True)
            check_archive(archive, row.app_hash, apps, row.archive)
        return self.journal.load(row.run_id)

    def _cannot_resume(self, row: RunRow, exc: BaseException) -> None:
        log.error("run %s cannot resume: %s", row.run_id, exc)
        with contextlib.suppress(StorageError):  # else the next hub tries again
            self._record_end(
                row.run_id, RunStatus.FAILED, f"cannot resume after a hub restart: {exc}"
            )

    def _start(
        self,
        run_id: str,
        process: RunProcess,
        app_hash: str,
        rounds: int | None,
        seed: int,
        resume_from: Checkpoint | None,
        resume_note: str = "",
        placement: Placement | None = None,
    ) -> None:
        grid = HubGrid(self.fleet, self.journal, run_id, app_hash, process.config, placement)
        thread = threading.Thread(
            target=self._run,
            args=(run_id, process, grid, rounds, seed, resume_from, resume_note),
            name=f"run-{run_id}",
            daemon=True,
        )
        self._grids[run_id], self._threads[run_id] = grid, thread
        self._processes[run_id] = process
        thread.start()

    def stop(self, run_id: str) -> str | None:
        """Stop a run; None if stopped, else why not."""
        row = self.state.run(run_id)
        if row is None:
            return f"no run {run_id!r}; `pollinate ls` lists the runs"
        grid = self._grids.get(run_id)
        if row.status is not RunStatus.RUNNING or grid is None:
            return f"run {run_id} is {row.status}, not running"
        grid.stopped.set()
        process = self._processes.get(run_id)
        if process is not None:
            process.stop_soon()
        return None

    def storage_problem(self, run_id: str) -> str:
        """Why the run waits for its data dir, or an empty string."""
        grid = self._grids.get(run_id)
        return grid.storage_problem if grid else ""

    def log(self, run_id: str, kind: str, text: str) -> None:
        self.state.append_log(run_id, kind, text)
        with self.changed:
            self.changed.notify_all()

    def join(self, timeout: float | None = None) -> None:
        """Wait for every run (and resumption) thread to end, at most ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while alive := [t for t in list(self._threads.values()) if t.is_alive()]:
            for thread in alive:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                thread.join(left)
            if deadline is not None and time.monotonic() >= deadline:
                return

    def close(self) -> None:
        """The hub stops: end every run process, recording nothing (their runs stay running,
        and the next hub on this data dir resumes them)."""
        self._closing.set()
        for process in list(self._processes.values()):
            process.end()
        # their threads end at once now; wait, so none touches the state once the hub closes it
        self.join(CLOSE_SECONDS)

    def _run(
        self,
        run_id: str,
        process: RunProcess,
        grid: HubGrid,
        rounds: int | None,
        seed: int,
        resume_from: Checkpoint | None,
        resume_note: str,
    ) -> None:
        handler = _RunLogHandler(self, run_id)
        logging.getLogger("pollinate").addHandler(handler)
        hooks = Hooks(
            checkpoint=lambda checkpoint: self._checkpoint(grid, run_id, checkpoint),
            event=lambda event: self.events.publish(run_id, event),
            rounds=lambda n: grid.until_stored(lambda: self.state.update_run(run_id, rounds=n)),
        )
        try:
            if resume_note:  # a hub started on a data dir that takes no writes waits for it
                grid.until_stored(lambda: self.log(run_id, "resume", resume_note))
            start = {"run_id": run_id, "rounds": rounds, "seed": seed}
            status, detail = process.serve(grid, start, resume_from, hooks)
            grid.close()  # an asynchronous run ends with tasks in flight: withdraw them
            if self._closing.is_set():
                return  # the hub stops: the run stays running, for the next hub to resume
            if status == "finished":
                self._finish(run_id, RunStatus.FINISHED, "")
            elif status == "stopped":
                self._finish(run_id, RunStatus.STOPPED, "stopped by a user")
            else:
                self._finish(run_id, RunStatus.FAILED, detail)
        except RunStopped:
            self._finish(run_id, RunStatus.STOPPED, "stopped by a user")
        except Exception as exc:  # a hub bug must fail this run, not leave it running
            log.exception("run %s failed", run_id)
            self._finish(run_id, RunStatus.FAILED, f"{type(exc).__name__}: {exc}")
        finally:
            process.end()
            grid.close()
            logging.getLogger("pollinate").removeHandler(handler)
            self._grids.pop(run_id, None)
            self._processes.pop(run_id, None)

    def _checkpoint(self, grid: HubGrid, run_id: str, checkpoint: Checkpoint) -> None:
        record = checkpoint.history.rounds[-1]
        grid.until_stored(lambda: self.journal.save(run_id, checkpoint, record))
        with self.changed:
            self.changed.notify_all()

    def _finish(self, run_id: str, status: RunStatus, detail: str) -> None:
        """Record that the run ended, retrying while the data dir refuses writes: a run shown
        "running" with no thread behind it would hold its followers forever."""
        warned = False
        while True:
            try:
                self._record_end(run_id, status, detail)
                return
            except StorageError as exc:
                if not warned:
                    log.error("run %s %s; recording it waits for the disk: %s", run_id, status, exc)
                warned = True
                time.sleep(STORAGE_RETRY_SECONDS)

    def _record_end(self, run_id: str, status: RunStatus, detail: str) -> None:
        # the last line goes in before the status changes: a follower that sees the run
        # ended reads the log once more and must find that line there
        self.state.append_log(
            run_id, "status", f"run {run_id} {status}" + (f": {detail}" if detail else "")
        )
        self.state.update_run(run_id, status=status, detail=detail)
        self.journal.forget(run_id)
        with self.changed:
            self.changed.notify_all()


class _RunLogHandler(logging.Handler):
    """Copies log records of one run into its log."""

    def __init__(self, runs: Runs, run_id: str) -> None:
        super().__init__(logging.WARNING)
        self.runs, self.run_id = runs, run_id

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "run_id", None) == self.run_id:
            # when the disk takes nothing, the hub's own log (stderr) still has the record
            with contextlib.suppress(StorageError):
                self.runs.log(self.run_id, "log", record.getMessage())


def _transient(exc: BaseException) -> bool:
    """A disk that is full, read-only or failing: it may take writes again later."""
    if isinstance(exc, StorageError):
        return True
    return isinstance(exc, OSError) and exc.errno in (
        errno.ENOSPC,
        errno.EROFS,
        errno.EIO,
        errno.EDQUOT,
    )
