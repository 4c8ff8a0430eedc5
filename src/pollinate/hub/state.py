"""The hub's durable state: SQLite (WAL) for rows, files for big bytes.

Layout of a data dir::

    hub.db              runs, nodes, log entries, tasks, checkpoints (and the security tables,
                        users and the audit: ``users.py``, ``audit.py``)
    blobs/ab/abcd...    content-addressed files (app archives), named by SHA-256
    runs/RUN/...        each run's checkpoint and the replies of its current round (journal.py)
    writable            a probe: new work first checks that the data dir takes a new file

One connection, guarded by a lock: the hub's threads take turns; SQLite's WAL lets readers in
other processes look at the database while the hub writes. Transactions are synchronous=FULL:
a committed round survives a crash of the process and of the machine.

Invariant: a write that cannot reach the disk (full, read-only, I/O error) raises
``StorageError`` and changes nothing; what was committed before stays as it was.

Text kept for people to read (log lines, a run's app name and detail) may quote nodes and
users, so it is stored inert (``pollinate.text``): one line, at most ``MAX_LINE`` characters.
A round's line is the exception: it is JSON of a ``RoundRecord``, whose text is bounded.

Projects. Every run belongs to one project, and every node to the projects of the token that
enrolled it (``node_projects``); a node with none recorded (named in insecure mode, or
enrolled by an older hub) and a run recorded by an older hub belong to ``DEFAULT_PROJECT``.

Upgrades. The schema only grows, by tables: a hub started on an older data dir creates the
tables it lacks, and what is not in them (a run or node with no project row) means what it
meant before. Columns of existing tables stay as they are, so an older hub can still read and
write a data dir a newer one used.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from pollinate.dirlock import lock_dir
from pollinate.errors import StorageError
from pollinate.hub.access import DEFAULT_PROJECT
from pollinate.hub.atomic_file import AtomicFile
from pollinate.placement import Placement, parse_selector
from pollinate.text import MAX_LINE, MAX_NAME, inert

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
CREATE TABLE IF NOT EXISTS run_selectors (
    run_id TEXT PRIMARY KEY,
    selector TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS run_node_counts (
    run_id TEXT PRIMARY KEY,
    min_nodes INTEGER NOT NULL,
    max_nodes INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS run_projects (
    run_id TEXT PRIMARY KEY,
    project TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS nodes (
    node_id INTEGER PRIMARY KEY,
    name TEXT UNIQUE,
    app_hash TEXT NOT NULL DEFAULT '',
    node_config TEXT NOT NULL DEFAULT '{}',
    last_seen REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS node_projects (
    node_id INTEGER NOT NULL,
    project TEXT NOT NULL,
    PRIMARY KEY (node_id, project)
);
CREATE TABLE IF NOT EXISTS revoked_nodes (
    node_id INTEGER PRIMARY KEY,
    revoked_at REAL NOT NULL,
    revoked_by TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS node_labels (
    node_id INTEGER NOT NULL,
    source TEXT NOT NULL,
    labels TEXT NOT NULL,
    PRIMARY KEY (node_id, source)
);
CREATE TABLE IF NOT EXISTS cordoned_nodes (
    node_id INTEGER PRIMARY KEY,
    cordoned_at REAL NOT NULL,
    cordoned_by TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS node_certificates (
    node_id INTEGER PRIMARY KEY,
    expires REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    projects TEXT NOT NULL,
    created REAL NOT NULL,
    created_by TEXT NOT NULL,
    revoked_at REAL,
    revoked_by TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    who TEXT NOT NULL,
    action TEXT NOT NULL,
    project TEXT NOT NULL,
    target TEXT NOT NULL,
    outcome TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    time REAL NOT NULL,
    kind TEXT NOT NULL,
    text TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS log_by_run ON log (run_id, seq);
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    round INTEGER NOT NULL,
    node_id INTEGER NOT NULL,
    reply TEXT
);
CREATE INDEX IF NOT EXISTS tasks_by_run ON tasks (run_id, round);
CREATE TABLE IF NOT EXISTS checkpoints (
    run_id TEXT PRIMARY KEY,
    round INTEGER NOT NULL,
    path TEXT NOT NULL
);
"""

# the project of the run being submitted in this thread (``HubState.submitting_to``)
_SUBMISSION_PROJECT: ContextVar[str | None] = ContextVar("submission_project", default=None)

# SQLite's names for a disk that takes no more writes; any other error is a bug, not the disk.
_STORAGE_FAILURES = ("SQLITE_FULL", "SQLITE_READONLY", "SQLITE_IOERR", "SQLITE_CANTOPEN")


# hub.db's ``rounds`` for "the app's own number" (None in RunRow): the column is NOT NULL in
# the data dirs of earlier hubs, so the state keeps their value for it, here and only here
_APP_ROUNDS = -1


class RunStatus(StrEnum):
    """Where a run is. Stored (``hub.db``) and sent (the control API) as its value."""

    RUNNING = "running"
    FINISHED = "finished"
    STOPPED = "stopped"
    FAILED = "failed"


class LabelSource(StrEnum):
    """Whose labels a ``node_labels`` row holds. Stored as its value."""

    NODE = "node"  # the labels of the node's latest heartbeat
    RESOURCES = "resources"  # the resources of that heartbeat
    HUB = "hub"  # set by an admin (``Hub.label_node``); they override the node's own


@dataclass(frozen=True)
class RunRow:
    """A run as the hub records it; ``rounds`` is None until the run's app has said how many
    rounds it runs, unless its submission set them."""

    run_id: str
    app: str
    app_hash: str
    archive: str
    overrides: dict[str, str]
    rounds: int | None
    seed: int
    status: RunStatus
    round: int
    created: float
    detail: str
    project: str = DEFAULT_PROJECT


@dataclass(frozen=True)
class NodeRow:
    """A node as the hub records it: its projects, and who revoked it and when (None: not
    revoked). ``last_seen`` is when the hub last noted it alive (epoch seconds; 0: never);
    ``cordoned``: an admin took it out of new placements (``Hub.cordon_node``)."""

    node_id: int
    name: str | None
    projects: frozenset[str]
    last_seen: float
    revoked_at: float | None
    revoked_by: str
    cordoned: bool = False
    cert_expires: float | None = None  # epoch seconds; None: unknown (insecure mode, or
    # enrolled by an older hub and not renewed since)


@dataclass(frozen=True)
class TaskRow:
    """A task the hub sent, and the file holding its reply once one was recorded."""

    task_id: str
    run_id: str
    round: int
    node_id: int
    reply: str | None


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
        self.lock = threading.RLock()
        with self._storage_errors():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self._owner = lock_dir(self.data_dir, "hub", "--data-dir")
            self.connection = self._connect()
            self.connection.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(
            self.data_dir / "hub.db", check_same_thread=False, isolation_level=None
        )
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=FULL")
        return connection

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic write; StorageError (and nothing written) if the disk refuses it."""
        with self.lock, self._storage_errors():
            self.connection.execute("BEGIN IMMEDIATE")
            try:
                yield self.connection
                self.connection.execute("COMMIT")
            except BaseException:
                if self.connection.in_transaction:
                    self.connection.execute("ROLLBACK")
                raise

    @contextmanager
    def _storage_errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.OperationalError as exc:
            name = getattr(exc, "sqlite_errorname", "")
            if not name.startswith(_STORAGE_FAILURES):
                raise
            if name == "SQLITE_READONLY" and hasattr(self, "connection"):
                # opened while the data dir was read-only, the database stays read-only for
                # this connection: open it again, so the next try writes if the dir allows
                # (closed first: connections of one process share its read-only -shm)
                with self.lock:
                    self.connection.close()
                    self.connection = self._connect()
            raise self.storage_error(exc) from exc
        except OSError as exc:
            raise self.storage_error(exc) from exc

    def storage_error(self, cause: BaseException) -> StorageError:
        return StorageError(
            f"the hub cannot write to its data dir {self.data_dir}: {cause}.\nHint: free disk "
            f"space or make {self.data_dir} writable again; the hub goes on by itself once "
            "writes succeed, and nothing it recorded before is lost."
        )

    def close(self) -> None:
        with self.lock:
            self.connection.close()
            if self._owner >= 0:  # closing twice is fine
                os.close(self._owner)  # and with it the data dir's lock
                self._owner = -1

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """The connection, for reads; StorageError if the disk fails them."""
        with self.lock, self._storage_errors():
            yield self.connection

    # --- blobs ------------------------------------------------------------------------------

    def put_blob(self, data: bytes) -> str:
        """Store ``data`` under its SHA-256 (written once, atomically) and return the hash."""
        digest = hashlib.sha256(data).hexdigest()
        path = self.blob_path(digest)
        if not path.exists():
            self.write_file(path, [data])
        return digest

    def write_file(self, path: Path, pieces: Iterable[bytes | memoryview]) -> None:
        """Write ``path`` whole or not at all, and on the disk (not only in a cache) when this
        returns: a crash leaves the old file or the new one, never a torn one."""
        self.write_file_bytes(path, pieces)
        self.sync_folders([path.parent])

    def write_file_bytes(self, path: Path, pieces: Iterable[bytes | memoryview]) -> None:
        """``write_file`` but for the folder: the file's bytes are on the disk and its name
        is whole or absent, but its name survives a crash of the machine only once
        ``sync_folders`` of its folder returns (a writer of many files syncs it once)."""
        file = self.new_file(path)
        try:
            for piece in pieces:
                file.write(piece)
        except BaseException:
            file.discard()
            raise
        file.commit()

    def new_file(self, path: Path) -> AtomicFile:
        """``path`` to write whole or not at all, as ``write_file_bytes`` does at once."""
        return AtomicFile(path, self.storage_error)

    def sync_folders(self, folders: Iterable[Path]) -> None:
        """Put on the disk the names of the files written into ``folders``."""
        with self._storage_errors():
            for folder in folders:
                directory = os.open(folder, os.O_RDONLY)
                try:
                    os.fsync(directory)
                finally:
                    os.close(directory)

    def check_writable(self) -> None:
        """StorageError unless the data dir takes a new file now. On a full disk SQLite may
        still commit, into WAL pages it allocated before a checkpoint, while every new file
        (checkpoint, reply) fails: new work asks for what it will need first."""
        self.write_file(self.data_dir / "writable", [b"the hub writes here\n"])

    def blob_path(self, digest: str) -> Path:
        return self.data_dir / "blobs" / digest[:2] / digest

    # --- runs -------------------------------------------------------------------------------

    @contextmanager
    def submitting_to(self, project: str) -> Iterator[None]:
        """Runs recorded in this thread meanwhile belong to ``project``, whatever their row
        says: ``Hub.submit_run`` hands a run's project to ``add_run`` this way, so the run
        never exists without it, until ``Runs.submit`` takes the project itself."""
        token = _SUBMISSION_PROJECT.set(project)
        try:
            yield
        finally:
            _SUBMISSION_PROJECT.reset(token)

    def add_run(
        self, run: RunRow, first_log: tuple[str, str], placement: Placement | None = None
    ) -> None:
        """Record a new run, the first (kind, text) line of its log and its ``placement``
        (None: every node), at once: a run is never recorded without a log that says how it
        came to be, nor resumed on nodes it did not select."""
        project = _SUBMISSION_PROJECT.get() or run.project
        placement = placement or Placement()
        with self.transaction() as db:
            db.execute(
                "INSERT INTO log (run_id, time, kind, text) VALUES (?, ?, ?, ?)",
                (run.run_id, time.time(), first_log[0], _log_text(*first_log)),
            )
            db.execute(
                "INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run.run_id,
                    inert(run.app, MAX_NAME),
                    run.app_hash,
                    run.archive,
                    json.dumps(run.overrides),
                    _APP_ROUNDS if run.rounds is None else run.rounds,
                    run.seed,
                    RunStatus(run.status).value,
                    run.round,
                    run.created,
                    inert(run.detail, MAX_LINE),
                ),
            )
            db.execute("INSERT INTO run_projects VALUES (?, ?)", (run.run_id, project))
            if placement.selector:
                selector = str(placement.selector)
                db.execute("INSERT INTO run_selectors VALUES (?, ?)", (run.run_id, selector))
            if placement.min_nodes or placement.max_nodes:
                db.execute(
                    "INSERT INTO run_node_counts VALUES (?, ?, ?)",
                    (run.run_id, placement.min_nodes, placement.max_nodes),
                )

    def run_selector(self, run_id: str) -> str:
        """The run's placement selector as submitted; empty if it has none."""
        with self.reading() as db:
            row = db.execute(
                "SELECT selector FROM run_selectors WHERE run_id = ?", (run_id,)
            ).fetchone()
        return "" if row is None else str(row[0])

    def run_placement(self, run_id: str) -> Placement:
        """The run's placement as submitted (a run recorded by an older hub: its selector,
        no bounds); PlacementError if what is stored no longer parses."""
        with self.reading() as db:
            counts = db.execute(
                "SELECT min_nodes, max_nodes FROM run_node_counts WHERE run_id = ?", (run_id,)
            ).fetchone()
        min_nodes, max_nodes = (0, 0) if counts is None else (int(counts[0]), int(counts[1]))
        return Placement(parse_selector(self.run_selector(run_id)), min_nodes, max_nodes)

    def update_run(self, run_id: str, **fields: Any) -> None:
        if "status" in fields:
            fields["status"] = RunStatus(fields["status"]).value
        if "detail" in fields:
            fields["detail"] = inert(fields["detail"], MAX_LINE)
        columns = ", ".join(f"{name} = ?" for name in fields)
        with self.transaction() as db:
            db.execute(f"UPDATE runs SET {columns} WHERE run_id = ?", (*fields.values(), run_id))

    def runs(self) -> list[RunRow]:
        with self.reading() as db:
            rows = db.execute(f"{_SELECT_RUNS} ORDER BY created").fetchall()
        return [_run_row(row) for row in rows]

    def run(self, run_id: str) -> RunRow | None:
        with self.reading() as db:
            row = db.execute(f"{_SELECT_RUNS} WHERE run_id = ?", (run_id,)).fetchone()
        return None if row is None else _run_row(row)

    # --- nodes ------------------------------------------------------------------------------

    def node_for_name(self, name: str) -> int:
        """The node id of a named node (insecure mode), created on first sight."""
        with self.reading() as db:  # a heartbeat's lookup; only a new name needs a write
            row = db.execute("SELECT node_id FROM nodes WHERE name = ?", (name,)).fetchone()
        if row is not None:
            return int(row[0])
        with self.transaction() as db:
            row = db.execute("SELECT node_id FROM nodes WHERE name = ?", (name,)).fetchone()
            if row is not None:
                return int(row[0])
            return int(db.execute("INSERT INTO nodes (name) VALUES (?)", (name,)).lastrowid or 0)

    def new_node(self, projects: Iterable[str] = (DEFAULT_PROJECT,)) -> int:
        """A fresh node id (enrolment), in ``projects``."""
        with self.transaction() as db:
            node_id = int(db.execute("INSERT INTO nodes DEFAULT VALUES").lastrowid or 0)
            db.executemany(
                "INSERT INTO node_projects (node_id, project) VALUES (?, ?)",
                [(node_id, project) for project in sorted(set(projects))],
            )
            return node_id

    def node_projects(self) -> dict[int, frozenset[str]]:
        """The projects of every node that has some recorded (the others': the default)."""
        with self.reading() as db:
            rows = db.execute("SELECT node_id, project FROM node_projects").fetchall()
        found: dict[int, set[str]] = {}
        for node_id, project in rows:
            found.setdefault(int(node_id), set()).add(project)
        return {node_id: frozenset(projects) for node_id, projects in found.items()}

    def nodes(self) -> list[NodeRow]:
        """Every node the hub enrolled or named, by id."""
        projects = self.node_projects()
        with self.reading() as db:
            rows = db.execute(
                "SELECT node_id, name, last_seen, revoked_at, COALESCE(revoked_by, '') "
                "FROM nodes LEFT JOIN revoked_nodes USING (node_id) ORDER BY node_id"
            ).fetchall()
        with self.reading() as db:
            cordoned = {int(r[0]) for r in db.execute("SELECT node_id FROM cordoned_nodes")}
            expiries = dict(db.execute("SELECT node_id, expires FROM node_certificates"))
        default = frozenset({DEFAULT_PROJECT})
        return [
            NodeRow(
                node_id,
                name,
                projects.get(node_id, default),
                last_seen,
                revoked_at,
                by,
                node_id in cordoned,
                expiries.get(node_id),
            )
            for node_id, name, last_seen, revoked_at, by in rows
        ]

    def known_node(self, node_id: int) -> bool:
        """Whether the hub enrolled or named this node."""
        with self.reading() as db:
            return (
                db.execute("SELECT 1 FROM nodes WHERE node_id = ?", (node_id,)).fetchone()
                is not None
            )

    def set_node_labels(
        self, node_id: int, by_source: Mapping[LabelSource, Mapping[str, str]]
    ) -> None:
        """Keep the node's labels (and resources) from each source given, replacing what
        was kept from it; in one transaction."""
        with self.transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO node_labels VALUES (?, ?, ?)",
                [
                    (node_id, LabelSource(source).value, json.dumps(dict(labels), sort_keys=True))
                    for source, labels in by_source.items()
                ],
            )

    def node_labels(self) -> dict[int, dict[LabelSource, dict[str, str]]]:
        """Every node's kept labels and resources, by source."""
        with self.reading() as db:
            rows = db.execute("SELECT node_id, source, labels FROM node_labels").fetchall()
        kept: dict[int, dict[LabelSource, dict[str, str]]] = {}
        for node_id, source, labels in rows:
            kept.setdefault(int(node_id), {})[LabelSource(source)] = json.loads(labels)
        return kept

    def cordon_node(self, node_id: int, cordoned: bool, by: str) -> None:
        """Note the node cordoned by ``by`` now (or not: uncordoned); cordoning a cordoned
        node keeps its first cordon."""
        with self.transaction() as db:
            if cordoned:
                db.execute(
                    "INSERT OR IGNORE INTO cordoned_nodes VALUES (?, ?, ?)",
                    (node_id, time.time(), inert(by, MAX_NAME)),
                )
            else:
                db.execute("DELETE FROM cordoned_nodes WHERE node_id = ?", (node_id,))

    def note_certificate(self, node_id: int, expires: float) -> None:
        """Note when the node's newest certificate (enrolment, renewal) expires."""
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO node_certificates VALUES (?, ?)", (node_id, expires))

    def revoke_node(self, node_id: int, by: str) -> bool:
        """Note the node revoked by ``by`` now; False if the hub knows no such node. Revoking
        a revoked node keeps its first revocation."""
        with self.transaction() as db:
            known = db.execute("SELECT 1 FROM nodes WHERE node_id = ?", (node_id,)).fetchone()
            if known is not None:
                db.execute(
                    "INSERT OR IGNORE INTO revoked_nodes VALUES (?, ?, ?)",
                    (node_id, time.time(), inert(by, MAX_NAME)),
                )
        return known is not None

    def mark_alive(self, node_ids: Sequence[int]) -> None:
        """Note that these nodes are alive now (the hub does this every few seconds)."""
        now = time.time()
        with self.transaction() as db:
            db.executemany(
                "INSERT INTO nodes (node_id, last_seen) VALUES (?, ?) "
                "ON CONFLICT(node_id) DO UPDATE SET last_seen = excluded.last_seen",
                [(node_id, now) for node_id in node_ids],
            )

    def alive_at_last_note(self, window: float) -> list[int]:
        """The nodes noted alive within ``window`` seconds of the newest note: the fleet as
        it was when the hub last looked, which a restarted hub expects back."""
        with self.reading() as db:
            rows = db.execute(
                "SELECT node_id FROM nodes WHERE last_seen > 0 AND "
                "last_seen >= (SELECT MAX(last_seen) FROM nodes) - ? ORDER BY node_id",
                (window,),
            ).fetchall()
        return [int(row[0]) for row in rows]

    # --- log --------------------------------------------------------------------------------

    def append_log(self, run_id: str, kind: str, text: str) -> int:
        with self.transaction() as db:
            cursor = db.execute(
                "INSERT INTO log (run_id, time, kind, text) VALUES (?, ?, ?, ?)",
                (run_id, time.time(), kind, _log_text(kind, text)),
            )
            return int(cursor.lastrowid or 0)

    def log_after(self, run_id: str, after: int) -> list[LogRow]:
        with self.reading() as db:
            rows = db.execute(
                "SELECT seq, run_id, time, kind, text FROM log WHERE run_id = ? AND seq > ? "
                "ORDER BY seq",
                (run_id, after),
            ).fetchall()
        return [LogRow(*row) for row in rows]


def _log_text(kind: str, text: str) -> str:
    """A log line as stored: inert, but for a round's JSON (bounded by its RoundRecord)."""
    return text if kind == "round" else inert(text, MAX_LINE)


# a run with no project row was recorded by an older hub: it is the default project's
_SELECT_RUNS = (
    f"SELECT runs.*, COALESCE(project, '{DEFAULT_PROJECT}') "
    "FROM runs LEFT JOIN run_projects USING (run_id)"
)


def _run_row(row: tuple[Any, ...]) -> RunRow:
    run_id, app, app_hash, archive, overrides, rounds, seed, status, *rest = row
    return RunRow(
        run_id,
        app,
        app_hash,
        archive,
        json.loads(overrides),
        None if rounds == _APP_ROUNDS else rounds,
        seed,
        RunStatus(status),
        *rest,
    )
