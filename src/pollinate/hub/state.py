"""The hub's durable state: SQLite (WAL) for rows, content-addressed files for big bytes.

Layout of a data dir::

    hub.db              runs, nodes, log entries (and the security module's tables)
    blobs/ab/abcd...    content-addressed files (app archives), named by SHA-256

One connection, guarded by a lock: the hub's threads take turns; SQLite's WAL lets readers in
other processes look at the database while the hub writes.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    app TEXT NOT NULL,
    app_hash TEXT NOT NULL,
    archive TEXT NOT NULL,
    overrides TEXT NOT NULL,
    rounds INTEGER NOT NULL,
    seed INTEGER NOT NULL,
    status TEXT NOT NULL,
    round INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS nodes (
    node_id INTEGER PRIMARY KEY,
    name TEXT UNIQUE,
    app_hash TEXT NOT NULL DEFAULT '',
    node_config TEXT NOT NULL DEFAULT '{}',
    last_seen REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    time REAL NOT NULL,
    kind TEXT NOT NULL,
    text TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS log_by_run ON log (run_id, seq);
"""


@dataclass(frozen=True)
class RunRow:
    run_id: str
    app: str
    app_hash: str
    archive: str
    overrides: dict[str, str]
    rounds: int
    seed: int
    status: str
    round: int
    created: float
    detail: str


@dataclass(frozen=True)
class LogRow:
    seq: int
    run_id: str
    time: float
    kind: str
    text: str


class HubState:
    """Runs, nodes and logs in ``data_dir/hub.db``; blobs in ``data_dir/blobs``."""

    def __init__(self, data_dir: str | Path) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.connection = sqlite3.connect(
            self.data_dir / "hub.db", check_same_thread=False, isolation_level=None
        )
        self.connection.execute("PRAGMA journal_mode=WAL")
        self.connection.execute("PRAGMA synchronous=NORMAL")
        self.connection.executescript(_SCHEMA)
        self.lock = threading.RLock()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self.lock:
            self.connection.execute("BEGIN IMMEDIATE")
            try:
                yield self.connection
            except BaseException:
                self.connection.execute("ROLLBACK")
                raise
            self.connection.execute("COMMIT")

    def close(self) -> None:
        with self.lock:
            self.connection.close()

    # --- blobs ------------------------------------------------------------------------------

    def put_blob(self, data: bytes) -> str:
        """Store ``data`` under its SHA-256 (written once, atomically) and return the hash."""
        digest = hashlib.sha256(data).hexdigest()
        path = self.blob_path(digest)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.partial")
            partial.write_bytes(data)
            os.replace(partial, path)
        return digest

    def blob_path(self, digest: str) -> Path:
        return self.data_dir / "blobs" / digest[:2] / digest

    # --- runs -------------------------------------------------------------------------------

    def add_run(self, run: RunRow) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run.run_id,
                    run.app,
                    run.app_hash,
                    run.archive,
                    json.dumps(run.overrides),
                    run.rounds,
                    run.seed,
                    run.status,
                    run.round,
                    run.created,
                    run.detail,
                ),
            )

    def update_run(self, run_id: str, **fields: Any) -> None:
        columns = ", ".join(f"{name} = ?" for name in fields)
        with self.transaction() as db:
            db.execute(f"UPDATE runs SET {columns} WHERE run_id = ?", (*fields.values(), run_id))

    def runs(self) -> list[RunRow]:
        with self.lock:
            rows = self.connection.execute("SELECT * FROM runs ORDER BY created").fetchall()
        return [_run_row(row) for row in rows]

    def run(self, run_id: str) -> RunRow | None:
        with self.lock:
            row = self.connection.execute(
                "SELECT * FROM runs WHERE run_id = ?", (run_id,)
            ).fetchone()
        return None if row is None else _run_row(row)

    # --- nodes ------------------------------------------------------------------------------

    def node_for_name(self, name: str) -> int:
        """The node id of a named node (insecure mode), created on first sight."""
        with self.transaction() as db:
            row = db.execute("SELECT node_id FROM nodes WHERE name = ?", (name,)).fetchone()
            if row is not None:
                return int(row[0])
            return int(db.execute("INSERT INTO nodes (name) VALUES (?)", (name,)).lastrowid or 0)

    def new_node(self) -> int:
        """A fresh node id (enrolment)."""
        with self.transaction() as db:
            return int(db.execute("INSERT INTO nodes DEFAULT VALUES").lastrowid or 0)

    def touch_node(self, node_id: int, app_hash: str, node_config: dict[str, str]) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO nodes (node_id, app_hash, node_config, last_seen) VALUES (?,?,?,?) "
                "ON CONFLICT(node_id) DO UPDATE SET app_hash = excluded.app_hash, "
                "node_config = excluded.node_config, last_seen = excluded.last_seen",
                (node_id, app_hash, json.dumps(node_config), time.time()),
            )

    # --- log --------------------------------------------------------------------------------

    def append_log(self, run_id: str, kind: str, text: str) -> int:
        with self.transaction() as db:
            cursor = db.execute(
                "INSERT INTO log (run_id, time, kind, text) VALUES (?, ?, ?, ?)",
                (run_id, time.time(), kind, text),
            )
            return int(cursor.lastrowid or 0)

    def log_after(self, run_id: str, after: int) -> list[LogRow]:
        with self.lock:
            rows = self.connection.execute(
                "SELECT seq, run_id, time, kind, text FROM log WHERE run_id = ? AND seq > ? "
                "ORDER BY seq",
                (run_id, after),
            ).fetchall()
        return [LogRow(*row) for row in rows]


def _run_row(row: tuple[Any, ...]) -> RunRow:
    values = list(row)
    values[4] = json.loads(values[4])
    return RunRow(*values)
