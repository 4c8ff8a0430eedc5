"""The hub's side of a run process: start it, serve its calls against the run's HubGrid,
and tell how it ended.

A run's server side runs in its own process (``run_process.py``), confined by Landlock and a
memory bound; this module holds the other end of its channel (``channel.py``). Each call of
the process is checked as a node's reply is: its tasks must belong to its run, its events and
round records are rebuilt field by field, its text is capped and inert, and anything else
ends the process and fails its run ("broke the hub's protocol").

Invariants:
- frames are handled in the order they come: a checkpoint is stored before the process's
  next call is served, so a round that was reported was recorded first, as in ``loop.run``;
- a run process that dies (killed, crashed, out of memory) fails its run alone, with the
  exit signal or status as the reason; the hub and other runs go on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import pwd
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pollinate.wire as wire
from pollinate.errors import AppError, WireError
from pollinate.hub.channel import (
    Channel,
    ChannelClosed,
    ChannelError,
    Chunks,
    File,
    event_from_json,
    field,
    record_from_json,
)
from pollinate.hub.grid import HubGrid, RunStopped
from pollinate.loop import checkpoint as checkpoints
from pollinate.loop.checkpoint import Checkpoint
from pollinate.loop.events import Event
from pollinate.loop.history import History
from pollinate.records import Config, Message, check_scalars
from pollinate.text import MAX_LINE, MAX_TEXT, cap, inert

log = logging.getLogger("pollinate.hub")
run_log = logging.getLogger("pollinate.run")

DEFAULT_RUN_MEMORY = 8 << 30
"""Bytes of address space a run process may use (``RLIMIT_AS``): past it, its allocations
fail (a ``MemoryError`` in Python) and its run fails with that reason."""
LOAD_SECONDS = 300.0
"""How long a run process may take to start and import its app."""
STOP_SECONDS = 10.0
"""How long a stopped run's process has to notice, before it is killed."""
MAX_JSON = 1 << 20
MAX_CALLS = 64
"""Calls (dispatches, waits) a run process may have open at once."""
_ENV_NAMES = ("PATH", "PYTHONPATH", "PYTHONHASHSEED", "LANG", "LANGUAGE", "TZ")
_ENV_PREFIXES = ("LC_", "OMP_", "OPENBLAS_", "MKL_", "CUDA_", "NVIDIA_", "POLLINATE_")


@dataclass(frozen=True)
class RunLimits:
    """What bounds each run process: ``memory`` bytes of address space (0: unbounded), and
    the OS ``user`` it runs as (None: the hub's; another needs a hub run as root). A run as
    another user gets a copy of its app in its scratch dir, both owned by that user."""

    memory: int = DEFAULT_RUN_MEMORY
    user: str | None = None

    @property
    def max_message(self) -> int:
        """The largest checkpoint or task list a run process can send: what it can hold."""
        return self.memory or wire.DEFAULT_LIMITS.max_total_array_bytes


@dataclass(frozen=True)
class Hooks:
    """Where a run process's reports go: the hub's journal, events and run record."""

    checkpoint: Callable[[Checkpoint], None]
    event: Callable[[Event], None]
    rounds: Callable[[int], None]


_sandbox_warned = threading.Event()


def start_process(
    app_dir: Path, overrides: dict[str, str], data_dir: Path, limits: RunLimits
) -> RunProcess:
    """A run process with its app loaded, or AppError (the process is gone then)."""
    scratch = Path(tempfile.mkdtemp(prefix="pollinate-run-"))
    parent, child = socket.socketpair()
    try:
        identity = _as_user(limits.user, app_dir, scratch)
        if limits.user is not None:
            app_dir = scratch / "app"
        process = subprocess.Popen(
            [sys.executable, "-m", "pollinate.hub.run_process", str(child.fileno())],
            pass_fds=(child.fileno(),),
            cwd=scratch,
            env=_environment(scratch),
            stdin=subprocess.DEVNULL,
            **identity,
        )
    except BaseException:  # no such user, may not switch to it, cannot start Python
        parent.close()
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    finally:
        child.close()
    channel = Channel(parent, max_json=MAX_JSON, max_message=limits.max_message)
    running = RunProcess(channel, process, scratch)
    try:
        setup = {
            "op": "setup",
            "app": str(app_dir.resolve()),  # the process works in its scratch dir
            "overrides": overrides,
            "read_write": str(scratch),
            "forbidden": str(data_dir.resolve()),
            "memory": limits.memory,
        }
        running.hello(setup)
    except BaseException:
        running.end()
        raise
    return running


def _as_user(user: str | None, app_dir: Path, scratch: Path) -> dict[str, Any]:
    """What ``Popen`` needs to start a run process as ``user`` (nothing for the hub's own),
    having given that user a copy of the app and the scratch dir. AppError if there is no
    such user; PermissionError if the hub may not switch to it (it is not root)."""
    if user is None:
        return {}
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise AppError(
            f"there is no OS user {user!r} to run the run's code as.\nHint: create it "
            "(`useradd --system pollinate-run`), or start the hub without --run-as-user"
        ) from None
    shutil.copytree(app_dir, scratch / "app")
    for directory, _, files in os.walk(scratch):
        for path in [directory, *(os.path.join(directory, name) for name in files)]:
            os.chown(path, entry.pw_uid, entry.pw_gid, follow_symlinks=False)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _environment(scratch: Path) -> dict[str, str]:
    """The hub's environment without what a run has no business seeing (its secrets)."""
    keep = {k: v for k, v in os.environ.items() if k in _ENV_NAMES or k.startswith(_ENV_PREFIXES)}
    return {**keep, "HOME": str(scratch), "TMPDIR": str(scratch), "PYTHONDONTWRITEBYTECODE": "1"}


class RunProcess:
    """One run process as the hub sees it, from its start to its end."""

    def __init__(self, channel: Channel, process: subprocess.Popen[bytes], scratch: Path) -> None:
        self.channel, self.process, self.scratch = channel, process, scratch
        self.name, self.config, self.sandbox = "", Config(), ""
        self._calls: dict[int, _Dispatch | None] = {}
        self._calls_lock = threading.Lock()

    def hello(self, setup: dict[str, Any]) -> None:
        """Send the setup and wait for the app to load; AppError if it does not."""
        self.channel.sock.settimeout(LOAD_SECONDS)
        try:
            self.channel.send(setup)
            op, _ = self.channel.receive()
        except (ChannelError, OSError):
            if self.process.poll() is None:  # alive, and silent past the socket's timeout
                why = f"the app did not load in its run process in {LOAD_SECONDS:g} s"
            else:
                why = f"the app's run process ended while loading it: {self._exit()}"
            raise AppError(why) from None
        finally:
            self.channel.sock.settimeout(None)
        if op["op"] == "app_error":
            raise AppError(_lines(str(op.get("message"))))
        try:
            self.name = inert(field(op, "name", str), 200)
            self.config = check_scalars(field(op, "config", dict), "the app's run config")
            self.sandbox = inert(field(op, "sandbox", str), MAX_TEXT)
        except (ChannelError, TypeError, ValueError) as exc:
            raise AppError(f"the app's run process said hello wrongly: {exc}") from None
        if not self.sandbox.startswith("Landlock") and not _sandbox_warned.is_set():
            _sandbox_warned.set()
            log.warning(
                "runs are NOT sandboxed (%s): a run's server code can read everything the "
                "hub's user can, the CA key included. Use Linux 5.13+ with Landlock enabled",
                self.sandbox,
            )

    def serve(
        self,
        grid: HubGrid,
        start: dict[str, Any],
        resume_from: Checkpoint | None,
        hooks: Hooks,
    ) -> tuple[str, str]:
        """Run the run: serve the process's calls until it says it is done or ends; returns
        (status, detail), status one of finished, stopped, failed."""
        resumed: list[Iterator[bytes | memoryview]] = []
        if resume_from is not None:
            start["history"] = [r.to_dict() for r in resume_from.history.rounds]
            resumed.append(checkpoints.iter_encode(resume_from))
        try:
            self.channel.send({"op": "start", **start}, resumed)
            while True:
                op, messages = self.channel.receive()
                if op["op"] == "done":
                    return self._done(op, grid)
                self._handle(op, messages, grid, hooks)
        except RunStopped:
            return "stopped", ""
        except ChannelClosed:
            if grid.stopped.is_set():
                return "stopped", ""
            return "failed", self._exit()
        except ChannelError as exc:
            return "failed", f"the run process broke the hub's protocol: {inert(str(exc))}"
        except OSError as exc:  # it died while the hub wrote to it
            return "failed", f"{self._exit()} ({exc})"
        finally:
            self.end()

    def stop_soon(self) -> None:
        """The run was stopped: its process notices at its next call, or is killed."""

        def kill_late() -> None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(STOP_SECONDS)
                return
            self.process.kill()

        threading.Thread(target=kill_late, name="stop-run-process", daemon=True).start()

    def end(self) -> None:
        """Kill the process (if it still runs), close the channel, delete its temp dir."""
        with self._calls_lock:
            for dispatch in self._calls.values():
                if dispatch is not None:
                    dispatch.inbox.put(None)  # no more pulls will come
        with contextlib.suppress(OSError):
            self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(30)
        with contextlib.suppress(OSError):
            self.channel.sock.shutdown(socket.SHUT_RDWR)
        self.channel.close()
        shutil.rmtree(self.scratch, ignore_errors=True)

    # --- the calls -------------------------------------------------------------------------

    def _handle(
        self, op: dict[str, Any], messages: list[memoryview], grid: HubGrid, hooks: Hooks
    ) -> None:
        name = op["op"]
        if name == "checkpoint":
            record = record_from_json(op.get("record"))
            checkpoint = _checkpoint(_one(messages), History([record]))
            if checkpoint.round != record.round:
                raise ChannelError("a checkpoint whose round is not its record's")
            hooks.checkpoint(checkpoint)
        elif name == "event":
            hooks.event(event_from_json(op.get("event")))
        elif name == "log":
            self._log(op, grid.run_id)
        elif name == "rounds":
            rounds = field(op, "rounds", int)
            if rounds < 0:
                raise ChannelError("a negative number of rounds")
            hooks.rounds(rounds)
        elif name == "nodes":
            self._reply({"op": "result", "call": self._call(op), "nodes": grid.nodes()})
        elif name == "wait_for_nodes":
            self._wait_for_nodes(op, grid)
        elif name == "dispatch":
            self._dispatch(op, messages, grid)
        elif name in ("next", "close"):
            self._steer(op)
        else:
            raise ChannelError(f"unknown op {inert(repr(name), 80)}")

    def _log(self, op: dict[str, Any], run_id: str) -> None:
        level = min(max(field(op, "level", int), logging.DEBUG), logging.CRITICAL)
        text = inert(field(op, "text", str), MAX_LINE)
        extra = {"run_id": run_id} if field(op, "run", bool) else None
        run_log.log(level, "%s", text, extra=extra)

    def _call(self, op: dict[str, Any]) -> int:
        call = field(op, "call", int)
        with self._calls_lock:
            if call in self._calls:
                raise ChannelError(f"call {call} is open already")
            if len(self._calls) >= MAX_CALLS:
                raise ChannelError(f"over {MAX_CALLS} calls open at once")
        return call

    def _wait_for_nodes(self, op: dict[str, Any], grid: HubGrid) -> None:
        call = self._call(op)
        count, timeout = field(op, "count", int), float(field(op, "timeout", (int, float)))
        with self._calls_lock:
            self._calls[call] = None

        def wait() -> None:
            try:
                nodes = grid.wait_for_nodes(count, timeout)
                self._reply({"op": "result", "call": call, "nodes": nodes})
            except RunStopped as exc:
                self._reply({"op": "error", "call": call, "stopped": True, "message": str(exc)})
            finally:
                with self._calls_lock:
                    self._calls.pop(call, None)

        threading.Thread(target=wait, name=f"wait-{grid.run_id}", daemon=True).start()

    def _dispatch(self, op: dict[str, Any], messages: list[memoryview], grid: HubGrid) -> None:
        call = self._call(op)
        tasks = _tasks(messages, op.get("same_arrays"), grid.run_id)
        dispatch = _Dispatch(self, call, grid, tasks, _remaining(op))
        with self._calls_lock:
            self._calls[call] = dispatch
        dispatch.start()

    def _steer(self, op: dict[str, Any]) -> None:
        call = field(op, "call", int)
        with self._calls_lock:
            dispatch = self._calls.get(call)
        if dispatch is None:
            return  # it ended meanwhile (its deadline): the process hears "end"
        dispatch.inbox.put(None if op["op"] == "close" else _remaining(op))

    def _reply(self, op: dict[str, Any], messages: Sequence[Chunks | File] = ()) -> None:
        with contextlib.suppress(OSError):  # a process that died: its serve() tells why
            self.channel.send(op, messages)

    def _done(self, op: dict[str, Any], grid: HubGrid) -> tuple[str, str]:
        status, detail = field(op, "status", str), inert(field(op, "detail", str), MAX_LINE)
        if status == "finished":
            return status, ""
        if status == "stopped" or grid.stopped.is_set():
            return "stopped", ""
        return "failed", detail

    def _exit(self) -> str:
        """Why the process ended, once it has."""
        try:
            code = self.process.wait(10)
        except subprocess.TimeoutExpired:
            return "the run process stopped answering"
        if code < 0:
            with contextlib.suppress(ValueError):
                name = signal.Signals(-code).name
                return f"the run process was killed by {name} (signal {-code})"
            return f"the run process was killed by signal {-code}"
        return f"the run process exited with status {code} before its run ended"


class _Dispatch(threading.Thread):
    """One dispatch of a run process, pulled one reply at a time by its ``next`` calls."""

    def __init__(
        self,
        process: RunProcess,
        call: int,
        grid: HubGrid,
        tasks: list[Message],
        remaining: float | None,
    ) -> None:
        super().__init__(name=f"dispatch-{grid.run_id}-{call}", daemon=True)
        self.process, self.call, self.grid, self.tasks = process, call, grid, tasks
        self.deadline = _Deadline(remaining)
        self.inbox: queue.Queue[float | None] = queue.Queue()

    def run(self) -> None:
        replies = self.grid.dispatch(self.tasks, self.deadline)
        try:
            while True:
                try:
                    reply = next(replies)
                except StopIteration:
                    self.process._reply({"op": "end", "call": self.call})
                    return
                op = {"op": "reply", "call": self.call, "lost": reply.lost}
                self.process._reply(op, [self._recorded(reply) or wire.iter_encode(reply)])
                del reply  # the run process has it now: this copy goes before the loop folds it
                remaining = self.inbox.get()
                if remaining is None:  # the process closed its iterator
                    return
                self.deadline.set(remaining)
        except RunStopped as exc:
            self._error(True, str(exc))
        except Exception as exc:  # a hub bug must fail this run, not hang it
            log.exception("run %s: a dispatch failed", self.grid.run_id)
            self._error(False, f"the hub failed a dispatch: {type(exc).__name__}: {exc}")
        finally:
            close = getattr(replies, "close", None)  # HubGrid's is a generator
            if close is not None:
                close()
            with self.process._calls_lock:
                self.process._calls.pop(self.call, None)

    def _recorded(self, reply: Message) -> File | None:
        """The journal's file of ``reply`` (its wire bytes, as the node's were checked and
        recorded), which the run process maps as it is: no copy of the reply's bytes; None
        for a reply the hub made (a lost node's) or one whose file is gone."""
        if reply.lost or not reply.arrays:
            return None
        task = self.grid.journal.task(reply.task_id)
        if task is None or task.reply is None:
            return None
        try:
            return File(os.open(task.reply, os.O_RDONLY | os.O_CLOEXEC))
        except OSError:
            return None

    def _error(self, stopped: bool, message: str) -> None:
        op = {"op": "error", "call": self.call, "stopped": stopped, "message": message}
        self.process._reply(op)


class _Deadline:
    """A dispatch's deadline as the run process last stated it (None: no deadline)."""

    def __init__(self, remaining: float | None) -> None:
        self._end: float | None = None
        self.set(remaining)

    def set(self, remaining: float | None) -> None:
        self._end = None if remaining is None else time.monotonic() + remaining

    def remaining(self) -> float:
        return math.inf if self._end is None else self._end - time.monotonic()


def _remaining(op: dict[str, Any]) -> float | None:
    value = op.get("remaining")
    if value is not None and (type(value) not in (int, float) or not value >= 0):
        raise ChannelError("'remaining' must be a number of seconds >= 0, or null")
    return None if value is None else float(value)


def _lines(text: str) -> str:
    """Text from a run process, its lines kept (an AppError's hint) and each inert."""
    return "\n".join(inert(line) for line in cap(text, MAX_LINE).split("\n")[:20])


def _one(messages: list[memoryview]) -> memoryview:
    if len(messages) != 1:
        raise ChannelError(f"expected one wire message, got {len(messages)}")
    return messages[0]


def _checkpoint(data: memoryview, history: History) -> Checkpoint:
    try:
        return checkpoints.decode(data, history)
    except WireError as exc:
        raise ChannelError(f"a checkpoint that is not one: {exc}") from None


def _tasks(messages: list[memoryview], same_arrays: Any, run_id: str) -> list[Message]:
    """A dispatch's tasks; ``same_arrays[i]`` names the earlier task whose arrays task ``i``
    shares (it came without its own: a round's model crosses once), or ``i`` itself."""
    tasks = [_task(data, run_id) for data in messages]
    if same_arrays is None:
        return tasks
    if not isinstance(same_arrays, list) or len(same_arrays) != len(tasks):
        raise ChannelError("'same_arrays' must be a list with one index per task")
    for index, carrier in enumerate(same_arrays):
        if carrier == index and type(carrier) is int:
            continue
        if type(carrier) is not int or not 0 <= carrier < index or same_arrays[carrier] != carrier:
            shown = inert(repr(carrier), 80)
            raise ChannelError(f"task {index} cannot share the arrays of task {shown}")
        if tasks[index].arrays:
            raise ChannelError(f"task {index} shares task {carrier}'s arrays and has its own")
        tasks[index] = dataclasses.replace(tasks[index], arrays=tasks[carrier].arrays)
    return tasks


def _task(data: memoryview, run_id: str) -> Message:
    """A task of the run ``run_id``: a run process cannot reach another run's tasks."""
    try:
        task = wire.decode(data)
    except WireError as exc:
        raise ChannelError(f"a task that is not a wire message: {exc}") from None
    if task.is_reply or task.run_id != run_id or not task.task_id.startswith(f"{run_id}:"):
        raise ChannelError(
            f"a task {inert(repr(task.task_id), 80)} that is not one of run {run_id}'s"
        )
    return task
