"""A run's history: what ran, and one record per round, saved as ``history.jsonl``.

``history.jsonl`` is JSON lines: a header (the schema version, ``SCHEMA``; the pollinate
version; the app, its hash, the run config and its overrides, seed, strategy, clients or
placement) then one ``RoundRecord`` per line, appended as each round ends
(``loop/history_writer.py``), so a run stopped at any moment keeps every round it finished.
docs/history.md describes every field. ``History.load`` also reads the ``history.json``
files of older pollinate: an object with the rounds inside (schema 2) or a bare list of
rounds (schema 1).
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import IO, Any

from pollinate.checks import is_number
from pollinate.records import Scalar
from pollinate.text import MAX_LINE, inert

SCHEMA = 4
"""The version of the history's layout: 1 was a bare list of rounds, 2 an object holding
them (both ``history.json``), 3 JSON lines (``history.jsonl``), 4 added each failure's
``kind`` and each round's ``aggregation_seconds``."""
FILE = "history.jsonl"
"""The history's file in a run's output directory."""
OLD_FILE = "history.json"
"""What pollinate before schema 3 wrote; ``History.load`` reads it when no ``FILE`` is there."""
WALL_TIMES = ("seconds", "aggregation_seconds")
"""A round record's wall-clock fields: the only ones two runs of the same seed differ in."""
MAX_LINE_BYTES = 64 << 20
"""The longest line ``History.load`` reads (a round with thousands of failures is ~1 MB)."""


class FailureKind(StrEnum):
    """Why a task produced nothing usable, in a word a dashboard or an alert can count."""

    CLIENT = "client"
    """The client raised, or its node refused the task (its own error, quoted)."""
    TIMEOUT = "timeout"
    """No reply by the stage's deadline."""
    LOST = "lost"
    """The hub ended the task without a reply: the node went silent, was revoked, or took
    the task again and again without answering."""
    INVALID = "invalid"
    """A reply that breaks the protocol: a non-finite loss, a malformed secure-aggregation
    part."""
    REJECTED = "rejected"
    """A fit update that arrived and failed validation, or that the strategy could not use."""
    UNKNOWN = "unknown"
    """Recorded by pollinate before kinds were kept (history schema 3 and older)."""


@dataclass
class Failure:
    """A task of a round that produced nothing usable, and why.

    ``reason`` often quotes the node (its error) and is kept as one line of at most
    ``MAX_LINE`` characters (``pollinate.text``): a history never holds a node's megabyte.
    """

    node_id: int
    stage: str
    reason: str
    kind: FailureKind = FailureKind.UNKNOWN

    def __post_init__(self) -> None:
        self.reason = inert(self.reason, MAX_LINE)
        self.kind = FailureKind(self.kind)


@dataclass
class RoundRecord:
    """What happened in one round.

    ``fit`` holds the aggregated fit metrics; ``evaluate`` the federated evaluation (``loss``
    plus aggregated metrics); ``centralized`` the server-side evaluation. ``replies`` and
    ``failures`` count fit tasks only (the updates aggregated, and those that failed or were
    rejected); ``failed`` lists every task that failed, fit and evaluate, with its stage;
    ``applied`` is False when the round lost more replies than
    the strategy's failure tolerance and the global model was kept. ``rejected`` counts the
    failures whose update arrived but failed validation (``screen.py``: misfit, non-finite,
    too large, or quarantined as an anomaly). ``resumed`` is True for
    the round a run went on with after its hub restarted (the round that was interrupted).
    ``aborted`` says why secure aggregation gave up on the round (e.g. substituted keys).
    ``aggregation_seconds`` is the part of ``seconds`` the hub spent screening and folding
    the updates and finishing the aggregate. Round 0 records the centralized evaluation of
    the initial model.
    """

    round: int
    fit: dict[str, Scalar] = field(default_factory=dict)
    evaluate: dict[str, Scalar] = field(default_factory=dict)
    centralized: dict[str, Scalar] = field(default_factory=dict)
    replies: int = 0
    failures: int = 0
    seconds: float = 0.0
    applied: bool = True
    failed: list[Failure] = field(default_factory=list)
    rejected: int = 0
    resumed: bool = False
    aborted: str | None = None
    aggregation_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return _json_safe(asdict(self))

    def line(self) -> str:
        """The record as a line of ``history.jsonl``."""
        return _line(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RoundRecord:
        """The record ``to_dict`` (or a line of ``history.jsonl``) describes."""
        data = dict(data)
        failed = [Failure(**f) for f in data.pop("failed", [])]
        return cls(**data, failed=failed)


@dataclass
class History:
    """What ran (the header of ``history.jsonl``) and its rounds, in order.

    ``overrides`` are the ``--config`` values given on the command line (``config`` already
    holds them); ``clients`` is the number of virtual clients of a simulation, ``placement``
    the node selector of a hub run.
    """

    rounds: list[RoundRecord] = field(default_factory=list)
    app: str = ""
    seed: int | None = None
    config: dict[str, Scalar] = field(default_factory=dict)
    pollinate: str = field(default_factory=lambda: _version())
    app_hash: str = ""
    overrides: dict[str, str] = field(default_factory=dict)
    strategy: str = ""
    num_rounds: int | None = None
    clients: int | None = None
    placement: str | None = None
    run_id: str = ""

    def header(self) -> dict[str, Any]:
        """The first line of ``history.jsonl``: what the run was."""
        return {
            "schema": SCHEMA,
            "pollinate": self.pollinate,
            "app": self.app,
            "app_hash": self.app_hash,
            "run_id": self.run_id,
            "seed": self.seed,
            "strategy": self.strategy,
            "num_rounds": self.num_rounds,
            "clients": self.clients,
            "placement": self.placement,
            "config": _json_safe(dict(self.config)),
            "overrides": dict(self.overrides),
        }

    def lines(self) -> list[str]:
        """``history.jsonl``'s lines: the header, then a line per round."""
        return [_line(self.header()), *(r.line() for r in self.rounds)]

    def with_round(self, record: RoundRecord) -> None:
        """Add ``record``; a round run again (resumed after a hub restart) replaces the
        records from its number on."""
        self.rounds = [r for r in self.rounds if r.round < record.round]
        self.rounds.append(record)

    @classmethod
    def from_lines(cls, lines: Iterable[str]) -> History:
        """The history ``lines()`` wrote. A last line cut short (the writer was killed
        mid-line) is left out; any other line that is not a record is a ValueError."""
        numbered = list(enumerate(lines, start=1))
        if not numbered:
            raise ValueError("empty history: expected a header line")
        history = cls._from_header(_parse(numbered[0][1], 1))
        for number, line in numbered[1:]:
            if not line.strip():
                continue
            try:
                data = _parse(line, number)
            except ValueError:
                if number == len(numbered) and not line.endswith("\n"):
                    break  # the line a crash cut: the rounds before it are whole
                raise
            history.with_round(_record(data, f"history line {number}"))
        return history

    @classmethod
    def _from_header(cls, data: dict[str, Any]) -> History:
        schema = data.get("schema")
        if not isinstance(schema, int) or "rounds" in data:
            raise ValueError("not a pollinate history.jsonl: its first line has no 'schema'")
        _check_schema(data)
        if not _typed(data, _HEADER_TYPES):
            raise ValueError("history header: a field has the wrong type (docs/history.md)")
        try:
            return cls(**{k: data[k] for k in _HEADER_FIELDS if k in data})
        except TypeError as exc:
            raise ValueError(f"history header: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        """The history as one object: the header's fields and ``rounds``."""
        return {**self.header(), "rounds": [r.to_dict() for r in self.rounds]}

    @classmethod
    def from_json(cls, text: str) -> History:
        """An older ``history.json``: schema 2's object, or schema 1's bare list of rounds."""
        data = json.loads(text)
        if isinstance(data, list):  # schema 1: the rounds alone
            return cls(_records(data), pollinate="")
        if not isinstance(data, dict) or not isinstance(data.get("schema"), int):
            raise ValueError("not a pollinate history: expected an object with a 'schema'")
        _check_schema(data)
        if not _typed(data, {**_HEADER_TYPES, "rounds": list}):
            raise ValueError("history: a field has the wrong type (docs/history.md)")
        return cls(
            _records(data.get("rounds", [])),
            app=data.get("app", ""),
            seed=data.get("seed"),
            config=dict(data.get("config", {})),
            pollinate=data.get("pollinate", ""),
        )

    @classmethod
    def load(cls, path: str | Path) -> History:
        """Read ``history.jsonl`` (or an older ``history.json``), or the one in directory
        ``path``.

        >>> import tempfile
        >>> out = History([RoundRecord(round=0)], app="demo", seed=1).save(tempfile.mkdtemp())
        >>> History.load(out).app, [r.round for r in History.load(out.parent).rounds]
        ('demo', [0])
        """
        target = Path(path)
        if target.is_dir():
            target = target / FILE if (target / FILE).exists() else target / OLD_FILE
        with open(target, encoding="utf-8", errors="replace") as file:
            first = file.readline(MAX_LINE_BYTES)
            if _is_header(first):
                return cls.from_lines(_bounded_lines(first, file))
            rest = file.read(4 * MAX_LINE_BYTES)  # schema 1 or 2: one JSON value
            if file.read(1):
                raise ValueError(f"{target}: longer than {4 * MAX_LINE_BYTES} characters")
            return cls.from_json(first + rest)

    def save(self, path: str | Path) -> Path:
        """Write ``history.jsonl`` into directory ``path`` (created if needed), whole or not
        at all. A running run appends instead (``HistoryWriter``)."""
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        target = out / FILE
        partial = out / f".{FILE}.{os.getpid()}.tmp"
        partial.write_text("".join(self.lines()))
        os.replace(partial, target)
        return target

    def metric(self, section: str, name: str) -> list[tuple[int, float]]:
        """``(round, value)`` pairs of one metric, e.g. ``metric("centralized", "accuracy")``."""
        out = []
        for r in self.rounds:
            value = getattr(r, section).get(name)
            if is_number(value):
                out.append((r.round, float(value)))
        return out


_HEADER_FIELDS = (
    *("app", "seed", "config", "pollinate", "app_hash", "overrides", "strategy"),
    *("num_rounds", "clients", "placement", "run_id"),
)


def _check_schema(data: dict[str, Any]) -> None:
    if data["schema"] > SCHEMA:
        raise ValueError(
            f"history schema {data['schema']} is newer than this pollinate reads "
            f"({SCHEMA}).\nHint: read it with pollinate {data.get('pollinate', '?')}"
        )


def _is_header(line: str) -> bool:
    """Whether ``line`` is the header of a ``history.jsonl`` (not the start of an older
    ``history.json``, which is one JSON value holding its rounds)."""
    try:
        data = json.loads(line)
    except json.JSONDecodeError:
        return False
    return isinstance(data, dict) and "rounds" not in data and "schema" in data


def _line(data: dict[str, Any]) -> str:
    return json.dumps(data, allow_nan=False, separators=(",", ":")) + "\n"


def _parse(line: str, number: int) -> dict[str, Any]:
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"history line {number} is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"history line {number} is not a JSON object")
    return data


_FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    **dict.fromkeys(("fit", "evaluate", "centralized"), dict),
    **dict.fromkeys(("replies", "failures", "rejected"), int),
    **dict.fromkeys(("applied", "resumed"), bool),
    **dict.fromkeys(("seconds", "aggregation_seconds"), (int, float)),
    "failed": list,
    "aborted": (str, type(None)),
}
_HEADER_TYPES: dict[str, type | tuple[type, ...]] = {
    **dict.fromkeys(("app", "app_hash", "run_id", "strategy", "pollinate"), str),
    **dict.fromkeys(("seed", "num_rounds", "clients"), (int, type(None))),
    **dict.fromkeys(("config", "overrides"), dict),
    "placement": (str, type(None)),
}


def _record(data: object, where: str) -> RoundRecord:
    """``data`` (``where`` says where it was) as a RoundRecord, its fields' types checked:
    a file may come from anywhere."""
    if not isinstance(data, dict) or not _typed(data, _FIELD_TYPES):
        raise ValueError(f"{where} is not a round record")
    round_ok = isinstance(data.get("round"), int) and data["round"] >= 0
    failed_ok = all(isinstance(f, dict) for f in data.get("failed", []))
    if not (round_ok and failed_ok):
        raise ValueError(f"{where} is not a round record")
    try:
        return RoundRecord.from_dict(data)
    except (TypeError, AttributeError, ValueError) as exc:
        raise ValueError(f"{where} is not a round record: {exc}") from None


def _typed(data: dict[str, Any], types: dict[str, type | tuple[type, ...]]) -> bool:
    """Whether each of ``data``'s fields named in ``types`` has its type (a bool is no int)."""
    for name, kind in types.items():
        value = data.get(name)
        if name in data and (not isinstance(value, kind) or (kind is int and value is True)):
            return False
    return True


def _records(rounds: list[Any]) -> list[RoundRecord]:
    return [_record(r, f"history round entry {i}") for i, r in enumerate(rounds)]


def _bounded_lines(first: str, file: IO[str]) -> Iterator[str]:
    """``first``, then the file's lines, each at most ``MAX_LINE_BYTES``: a longer one is
    refused rather than read whole."""
    line = first
    while line:
        if len(line) >= MAX_LINE_BYTES and not line.endswith("\n"):
            raise ValueError(f"a history line is longer than {MAX_LINE_BYTES} characters")
        yield line
        line = file.readline(MAX_LINE_BYTES)


def _version() -> str:
    try:
        return importlib.metadata.version("pollinate")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _json_safe(value: Any) -> Any:
    """JSON has no NaN or bytes: write them as null and as a hex string."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, bytes):
        return value.hex()
    return value
