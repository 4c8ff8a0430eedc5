"""A run's history: one record per round, saved as ``history.json``.

``history.json`` is an object: the schema version (``SCHEMA``), the pollinate version that
wrote it, the app, seed and run config, and ``rounds``, one ``RoundRecord`` each.
docs/history.md describes every field; ``History.load`` also reads the bare list of rounds
that files without a ``schema`` held (schema 1).
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pollinate.checks import is_number
from pollinate.records import Scalar
from pollinate.text import MAX_LINE, inert

SCHEMA = 2
"""The version of ``history.json``'s layout: 1 was a bare list of rounds, 2 the object."""


@dataclass
class Failure:
    """A task of a round that produced nothing usable, and why.

    ``reason`` often quotes the node (its error) and is kept as one line of at most
    ``MAX_LINE`` characters (``pollinate.text``): a history never holds a node's megabyte.
    """

    node_id: int
    stage: str
    reason: str

    def __post_init__(self) -> None:
        self.reason = inert(self.reason, MAX_LINE)


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
    Round 0 records the centralized evaluation of the initial model.
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

    def to_dict(self) -> dict[str, Any]:
        return _json_safe(asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RoundRecord:
        """The record ``to_dict`` (or a line of ``history.json``) describes."""
        data = dict(data)
        failed = [Failure(**f) for f in data.pop("failed", [])]
        return cls(**data, failed=failed)


@dataclass
class History:
    """The rounds of a run, in order, and what ran: the app, its seed and run config."""

    rounds: list[RoundRecord] = field(default_factory=list)
    app: str = ""
    seed: int | None = None
    config: dict[str, Scalar] = field(default_factory=dict)
    pollinate: str = field(default_factory=lambda: _version())

    def to_dict(self) -> dict[str, Any]:
        """``history.json`` as a dict (schema ``SCHEMA``)."""
        return {
            "schema": SCHEMA,
            "pollinate": self.pollinate,
            "app": self.app,
            "seed": self.seed,
            "config": _json_safe(dict(self.config)),
            "rounds": [r.to_dict() for r in self.rounds],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> History:
        """The history ``to_json`` wrote, or an older file's bare list of rounds."""
        data = json.loads(text)
        if isinstance(data, list):  # schema 1: the rounds alone
            return cls([RoundRecord.from_dict(r) for r in data], pollinate="")
        if not isinstance(data, dict) or not isinstance(data.get("schema"), int):
            raise ValueError("not a pollinate history: expected an object with a 'schema'")
        if data["schema"] > SCHEMA:
            raise ValueError(
                f"history schema {data['schema']} is newer than this pollinate reads "
                f"({SCHEMA}).\nHint: read it with pollinate {data.get('pollinate', '?')}"
            )
        return cls(
            [RoundRecord.from_dict(r) for r in data["rounds"]],
            app=data.get("app", ""),
            seed=data.get("seed"),
            config=dict(data.get("config", {})),
            pollinate=data.get("pollinate", ""),
        )

    @classmethod
    def load(cls, path: str | Path) -> History:
        """Read ``history.json``, or the one in directory ``path``.

        >>> import tempfile
        >>> out = History([RoundRecord(round=0)], app="demo", seed=1).save(tempfile.mkdtemp())
        >>> History.load(out).app, [r.round for r in History.load(out.parent).rounds]
        ('demo', [0])
        """
        target = Path(path)
        if target.is_dir():
            target = target / "history.json"
        return cls.from_json(target.read_text())

    def save(self, path: str | Path) -> Path:
        """Write ``history.json`` into directory ``path`` (created if needed), whole or not
        at all: a run interrupted while it writes leaves the previous file."""
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        target = out / "history.json"
        partial = out / f".history.json.{os.getpid()}.tmp"
        partial.write_text(self.to_json() + "\n")
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
