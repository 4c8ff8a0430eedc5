"""A run's server side in a process of its own: ``python -m pollinate.hub.run_process FD``.

The hub (``supervisor.py``) starts one per run, with one end of a socketpair as file
descriptor FD, and sends ``setup``. This process bounds its memory, restricts itself with
Landlock (``sandbox.py``) to the Python installation, its import path and its app (read-only)
and a private temp dir (read-write), and only then imports the app. It runs the run loop
against ``ProxyGrid``, whose calls are frames to the hub (``channel.py``); checkpoints, events
and log records go back the same way. It never sees the hub's data dir, CA key, database or
other runs.

The conversation, child -> hub (hub -> child)::

    (setup {app, overrides, read_write, forbidden, memory})
    hello {name, config, sandbox}  |  app_error {message}
    (start {run_id, rounds, seed, history} + a checkpoint, when it resumes)
    rounds {rounds}
    nodes {call}                         (result {call, nodes})
    wait_for_nodes {call, count, timeout}  (result {call, nodes} | error {call, ...})
    dispatch {call, remaining} + tasks   (reply {call} + a reply | end {call} | error {call,
    next {call, remaining}                 stopped, message}); close {call} ends one early
    checkpoint {record} + a checkpoint;  event {event};  log {level, text, run}
    done {status, detail}

Invariant: this process ends when the hub's end of the socket closes (the hub stopped or
died): a run process never outlives its hub.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import queue
import resource
import socket
import sys
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pollinate.wire as wire
from pollinate.app import App, load_app
from pollinate.errors import PollinateError, RunError
from pollinate.hub import sandbox
from pollinate.hub.channel import Channel, ChannelError, event_to_json
from pollinate.hub.grid import RunStopped
from pollinate.loop import checkpoint as checkpoints
from pollinate.loop.checkpoint import Checkpoint
from pollinate.loop.grid import Grid, Timeout, ends_at
from pollinate.loop.history import History, RoundRecord
from pollinate.loop.run import run
from pollinate.records import Arrays, Message
from pollinate.text import MAX_LINE, inert

EXIT_HUB_GONE = 70
"""This process's exit status when the hub closed its end of the channel."""
FROM_HUB = 1 << 30
"""The hub is trusted here: its frames are bounded only against mistakes."""
_SYSTEM_READ_ONLY = ("/usr", "/lib", "/lib32", "/lib64", "/etc/ld.so.cache", "/etc/localtime")


def main(argv: Sequence[str]) -> int:
    sock = socket.socket(fileno=int(argv[1]))
    channel = Channel(sock, max_json=FROM_HUB, max_message=FROM_HUB, files_from_peer=True)
    try:
        setup, _ = channel.receive()
        try:
            note = _confine(setup)
        except (OSError, ValueError) as exc:  # a sandbox that cannot be set up: no run
            channel.send({"op": "app_error", "message": f"the run's sandbox failed: {exc}"})
            return 0
        _forward_logs(channel)
        app = _load(channel, setup)
        if app is None:
            return 0
        channel.send({"op": "hello", "name": app.name, "config": app.config, "sandbox": note})
        start, messages = channel.receive()
    except ChannelError:
        return EXIT_HUB_GONE
    status, detail = _run(channel, app, start, messages)
    channel.send({"op": "done", "status": status, "detail": detail})
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # threads the app started must not keep a finished run's process alive


def _confine(setup: dict[str, Any]) -> str:
    """Bound memory, then restrict file access: before any of the app's code runs."""
    memory = int(setup["memory"])
    if memory:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    sys.dont_write_bytecode = True  # the app's directory is read-only here
    forbidden = Path(setup["forbidden"]).resolve()
    read_only = [Path(setup["app"]), *(Path(p) for p in _SYSTEM_READ_ONLY), *_python_paths()]
    for path in read_only[1:]:
        if forbidden.is_relative_to(path.resolve()):
            raise ValueError(
                f"the hub's data dir {forbidden} lies inside {path}, which run processes "
                "must read (Python and its import path).\nHint: move the data dir elsewhere"
            )
    try:
        version = sandbox.restrict(read_only, [Path(setup["read_write"]), Path("/dev/null")])
    except sandbox.SandboxUnavailable as exc:
        return f"off: {exc}"
    return f"Landlock ABI {version}"


def _python_paths() -> list[Path]:
    prefixes = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    return [Path(p) for p in sorted({*prefixes, *sys.path}) if p and Path(p).exists()]


def _load(channel: Channel, setup: dict[str, Any]) -> App | None:
    try:
        return load_app(setup["app"], setup["overrides"])
    except PollinateError as exc:
        channel.send({"op": "app_error", "message": str(exc)})
    except Exception as exc:  # the app's module code may raise anything
        channel.send({"op": "app_error", "message": f"{type(exc).__name__}: {exc}"})
    return None


def _run(
    channel: Channel, app: App, start: dict[str, Any], messages: list[memoryview]
) -> tuple[str, str]:
    """Run the loop; (status, detail) for the hub."""
    run_id = str(start["run_id"])
    resume_from = None
    if messages:
        history = History([RoundRecord.from_dict(r) for r in start["history"]])
        resume_from = checkpoints.decode(messages[0], history)
    grid = ProxyGrid(channel)
    try:
        server_app = app.server_app()
        if start["rounds"] is not None:
            server_app.num_rounds = start["rounds"]
        channel.send({"op": "rounds", "rounds": server_app.num_rounds})
        run(
            grid,
            server_app,
            seed=start["seed"],
            run_id=run_id,
            on_checkpoint=lambda checkpoint: _checkpoint(channel, checkpoint),
            on_event=lambda event: channel.send({"op": "event", "event": event_to_json(event)}),
            resume_from=resume_from,
        )
        return "finished", ""
    except RunStopped:
        return "stopped", ""
    except PollinateError as exc:
        return "failed", str(exc)
    except Exception as exc:  # the app's server code may raise anything
        traceback.print_exc()
        return "failed", f"{type(exc).__name__}: {exc}"


def _checkpoint(channel: Channel, checkpoint: Checkpoint) -> None:
    # the hub handles frames in order: it has stored this before it reads the next task
    record = checkpoint.history.rounds[-1].to_dict()
    channel.send({"op": "checkpoint", "record": record}, [checkpoints.iter_encode(checkpoint)])


class ProxyGrid(Grid):
    """The run loop's Grid in a run process: every call is a call to the hub's ``HubGrid``.

    A reader thread routes the hub's answers to the calls waiting for them, so calls from
    several threads at once each get theirs. A dispatch pulls one reply at a time (``next``),
    passing the deadline as it is then: a ``Deadline`` that moves is read here, by the loop's
    own object, and the hub waits exactly as long.
    """

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self._calls: dict[int, queue.Queue[tuple[dict[str, Any], list[memoryview]]]] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        threading.Thread(target=self._read, name="hub-channel", daemon=True).start()

    def nodes(self) -> list[int]:
        return _node_ids(self._ask({"op": "nodes"}))

    def wait_for_nodes(self, count: int, timeout: float) -> list[int]:
        return _node_ids(self._ask({"op": "wait_for_nodes", "count": count, "timeout": timeout}))

    def dispatch(self, instructions: Sequence[Message], timeout: Timeout) -> Iterator[Message]:
        ends = ends_at(timeout)
        call, answers = self._open()
        ended = False
        try:
            same_arrays, tasks = _tasks(instructions)
            op = {"op": "dispatch", "call": call, "remaining": _left(ends)}
            self.channel.send({**op, "same_arrays": same_arrays}, tasks)
            while True:
                op, messages = answers.get()
                if op["op"] != "reply":
                    ended = True
                    _raise_if_error(op)
                    return
                data = messages[0]
                reply = wire.decode(data, wire.Limits(len(data), len(data), len(data)))
                # the hub's word that it lost the node travels beside the message (Message.lost)
                yield dataclasses.replace(reply, lost=op.get("lost") is True)
                self.channel.send({"op": "next", "call": call, "remaining": _left(ends)})
        finally:
            if not ended:
                self.channel.send({"op": "close", "call": call})
            self._forget(call)

    def _ask(self, op: dict[str, Any]) -> dict[str, Any]:
        call, answers = self._open()
        try:
            self.channel.send({**op, "call": call})
            answer, _ = answers.get()
        finally:
            self._forget(call)
        _raise_if_error(answer)
        return answer

    def _open(self) -> tuple[int, queue.Queue[tuple[dict[str, Any], list[memoryview]]]]:
        answers: queue.Queue[tuple[dict[str, Any], list[memoryview]]] = queue.Queue()
        with self._lock:
            call = next(self._ids)
            self._calls[call] = answers
        return call, answers

    def _forget(self, call: int) -> None:
        with self._lock:
            self._calls.pop(call, None)

    def _read(self) -> None:
        while True:
            try:
                op, messages = self.channel.receive()
            except ChannelError:
                os._exit(EXIT_HUB_GONE)  # the hub is gone: so is its run
            with self._lock:
                answers = self._calls.get(op.get("call", -1))
            if answers is not None:
                answers.put((op, messages))


def _tasks(instructions: Sequence[Message]) -> tuple[list[int], list[Iterator[bytes | memoryview]]]:
    """For each instruction, the index of the instruction whose arrays it carries, and its wire
    chunks: a round's tasks share one model (the same ``Arrays``), which then crosses to the
    hub once, and is held there once, not once per node."""
    first: dict[int, int] = {}  # id of an Arrays: the first instruction that carries it
    same_arrays: list[int] = []
    tasks: list[Iterator[bytes | memoryview]] = []
    for index, message in enumerate(instructions):
        carrier = first.setdefault(id(message.arrays), index) if message.arrays else index
        same_arrays.append(carrier)
        if carrier != index:
            message = dataclasses.replace(message, arrays=Arrays())
        tasks.append(wire.iter_encode(message))
    return same_arrays, tasks


def _left(ends: Any) -> float | None:
    end = ends()
    if end is None:
        return None
    return max(0.0, min(end - time.monotonic(), 1e9))


def _node_ids(answer: dict[str, Any]) -> list[int]:
    return [int(n) for n in answer["nodes"]]


def _raise_if_error(op: dict[str, Any]) -> None:
    if op["op"] != "error":
        return
    if op.get("stopped"):
        raise RunStopped(str(op.get("message", "the run was stopped")))
    raise RunError(str(op.get("message", "the hub refused a call")))


class _ForwardLogs(logging.Handler):
    """Sends this process's log records to the hub: its stderr, and (warnings about the run)
    the run's log."""

    def __init__(self, channel: Channel) -> None:
        super().__init__(logging.INFO)
        self.channel = channel

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = inert(record.getMessage(), MAX_LINE)
            run = hasattr(record, "run_id")
            self.channel.send({"op": "log", "level": record.levelno, "text": text, "run": run})
        except Exception:
            self.handleError(record)


def _forward_logs(channel: Channel) -> None:
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    root.addHandler(_ForwardLogs(channel))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
