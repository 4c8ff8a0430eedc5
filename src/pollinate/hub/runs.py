"""Runs at the hub: an uploaded app, unpacked and checked, run by the run loop in a thread.

The server side of the app (strategy, rounds, centralized evaluation) runs here; its client
side runs at the nodes. A run's log (rounds, warnings, status changes) is kept in the state
database, so ``pollinate log`` can replay and follow it.
"""

from __future__ import annotations

import importlib
import io
import json
import logging
import os
import secrets
import shutil
import sys
import threading
import time
import zipfile
from pathlib import Path

from pollinate.app import App, app_hash, load_app
from pollinate.errors import AppError, PollinateError
from pollinate.hub.fleet import Fleet
from pollinate.hub.grid import HubGrid, RunStopped
from pollinate.hub.state import HubState, RunRow
from pollinate.server.events import Event, RoundFinished
from pollinate.server.loop import run

log = logging.getLogger("pollinate.hub")

MAX_ARCHIVE_BYTES = 64 << 20
MAX_UNPACKED_BYTES = 256 << 20


class Runs:
    """Starts, tracks and stops the hub's runs."""

    def __init__(self, state: HubState, fleet: Fleet) -> None:
        self.state = state
        self.fleet = fleet
        self._grids: dict[str, HubGrid] = {}
        self._threads: dict[str, threading.Thread] = {}
        self.changed = threading.Condition()
        for row in state.runs():
            if row.status == "running":
                state.update_run(
                    row.run_id,
                    status="interrupted",
                    detail="the hub stopped while this run was running",
                )

    def submit(
        self, archive: bytes, declared_hash: str, overrides: dict[str, str], rounds: int, seed: int
    ) -> str:
        """Unpack and check the app, record the run and start it; AppError if it is unusable."""
        if len(archive) > MAX_ARCHIVE_BYTES:
            raise AppError(f"app archive is {len(archive)} bytes; the limit is {MAX_ARCHIVE_BYTES}")
        digest = self.state.put_blob(archive)
        root = _unpack(archive, self.state.data_dir / "apps" / digest)
        actual = app_hash(root)
        if actual != declared_hash:
            raise AppError(f"app archive hashes to {actual[:12]}, not {declared_hash[:12]}")
        app = _load_isolated(root, self.state.data_dir / "apps", overrides)
        run_id = secrets.token_hex(4)
        self.state.add_run(
            RunRow(
                run_id=run_id,
                app=app.name,
                app_hash=actual,
                archive=digest,
                overrides=overrides,
                rounds=rounds,
                seed=seed,
                status="running",
                round=0,
                created=time.time(),
                detail="",
            )
        )
        grid = HubGrid(self.fleet, actual, app.config)
        thread = threading.Thread(
            target=self._run,
            args=(run_id, app, grid, rounds, seed),
            name=f"run-{run_id}",
            daemon=True,
        )
        self._grids[run_id], self._threads[run_id] = grid, thread
        self.log(run_id, "status", f"run {run_id} of app {app.name} submitted")
        thread.start()
        return run_id

    def stop(self, run_id: str) -> str | None:
        """Stop a run; None if stopped, else why not."""
        row = self.state.run(run_id)
        if row is None:
            return f"no run {run_id!r}; `pollinate ls` lists the runs"
        grid = self._grids.get(run_id)
        if row.status != "running" or grid is None:
            return f"run {run_id} is {row.status}, not running"
        grid.stopped.set()
        return None

    def log(self, run_id: str, kind: str, text: str) -> None:
        self.state.append_log(run_id, kind, text)
        with self.changed:
            self.changed.notify_all()

    def join(self, timeout: float | None = None) -> None:
        for thread in list(self._threads.values()):
            thread.join(timeout)

    def _run(self, run_id: str, app: App, grid: HubGrid, rounds: int, seed: int) -> None:
        handler = _RunLogHandler(self, run_id)
        logging.getLogger("pollinate").addHandler(handler)
        try:
            server_app = app.server_app()
            if rounds >= 0:
                server_app.num_rounds = rounds
            self.state.update_run(run_id, rounds=server_app.num_rounds)
            run(
                grid,
                server_app,
                seed=seed,
                run_id=run_id,
                on_event=lambda event: self._on_event(run_id, event),
            )
            self._finish(run_id, "finished", "")
        except RunStopped:
            self._finish(run_id, "stopped", "stopped by a user")
        except PollinateError as exc:
            self._finish(run_id, "failed", str(exc))
        except Exception as exc:  # the app's server code may raise anything
            log.exception("run %s failed", run_id)
            self._finish(run_id, "failed", f"{type(exc).__name__}: {exc}")
        finally:
            logging.getLogger("pollinate").removeHandler(handler)
            self._grids.pop(run_id, None)

    def _on_event(self, run_id: str, event: Event) -> None:
        if isinstance(event, RoundFinished):
            record = event.record
            self.state.update_run(run_id, round=record.round)
            self.log(run_id, "round", json.dumps(record.to_dict()))

    def _finish(self, run_id: str, status: str, detail: str) -> None:
        # the last line goes in before the status changes: a follower that sees the run ended
        # reads the log once more and must find that line there
        self.state.append_log(
            run_id, "status", f"run {run_id} {status}" + (f": {detail}" if detail else "")
        )
        self.state.update_run(run_id, status=status, detail=detail)
        with self.changed:
            self.changed.notify_all()


class _RunLogHandler(logging.Handler):
    """Copies log records of one run into its log."""

    def __init__(self, runs: Runs, run_id: str) -> None:
        super().__init__(logging.WARNING)
        self.runs, self.run_id = runs, run_id

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "run_id", None) == self.run_id:
            self.runs.log(self.run_id, "log", record.getMessage())


def _unpack(archive: bytes, target: Path) -> Path:
    """Extract a zip of an app directory; refuses paths that would escape ``target``."""
    try:
        with zipfile.ZipFile(io.BytesIO(archive)) as zf:
            names = zf.namelist()
            for name in names:
                if name.startswith("/") or ".." in Path(name).parts:
                    raise AppError(f"app archive holds an unsafe path {name!r}")
            if "pyproject.toml" not in names:
                raise AppError("app archive has no pyproject.toml at its top")
            unpacked = sum(info.file_size for info in zf.infolist())
            if unpacked > MAX_UNPACKED_BYTES:
                raise AppError(
                    f"app archive unpacks to {unpacked} bytes; the limit is {MAX_UNPACKED_BYTES}"
                )
            root = target / "app"
            if not root.exists():
                partial = target / f"partial-{secrets.token_hex(4)}"
                zf.extractall(partial)
                try:
                    partial.rename(root)
                except OSError:
                    if not root.exists():
                        raise
                    shutil.rmtree(partial)  # the same app, unpacked by a concurrent submit
            return root
    except zipfile.BadZipFile as exc:
        raise AppError(f"app archive is not a valid zip file: {exc}") from None


_IMPORTS = threading.Lock()


def _load_isolated(root: Path, apps: Path, overrides: dict[str, str]) -> App:
    """``load_app``, after forgetting the modules and import path of every other app here.

    Two versions of one app share module names (``mypkg.server``) and Python caches modules
    by name: without this, a hub that ran version 1 would run version 1's code for version 2.
    A run already going keeps the module objects it holds.
    """
    root, apps = root.resolve(), apps.resolve()
    with _IMPORTS:
        for name, module in list(sys.modules.items()):
            where = _module_paths(module)
            if any(_inside(w, apps) and not _inside(w, root) for w in where):
                del sys.modules[name]
        sys.path[:] = [p for p in sys.path if not _inside(p, apps) or p == str(root)]
        importlib.invalidate_caches()
        return load_app(root, overrides)


def _module_paths(module: object) -> list[object]:
    paths = getattr(module, "__path__", None)
    try:
        return [getattr(module, "__file__", None), *(paths or [])]
    except TypeError:  # a module with an odd __path__ is no app's package
        return []


def _inside(path: object, directory: Path) -> bool:
    # app modules were imported from resolved roots (load_app resolves), so prefixes suffice
    return isinstance(path, str) and path.startswith(f"{directory}{os.sep}")


def pack_app(path: str | Path) -> bytes:
    """Zip an app directory (pyproject.toml and Python files) for submission to a hub."""
    root = Path(path).resolve()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for file in sorted([root / "pyproject.toml", *root.rglob("*.py")]):
            if file.is_file() and "__pycache__" not in file.parts:
                zf.write(file, str(file.relative_to(root)))
    return buffer.getvalue()
