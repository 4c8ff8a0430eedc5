"""A run's history: one record per round, saved as ``history.json``."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pollinate.checks import is_number
from pollinate.records import Scalar
from pollinate.text import MAX_LINE, inert


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
    ``failures`` count fit tasks; ``applied`` is False when the round lost more replies than
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
    """The rounds of a run, in order."""

    rounds: list[RoundRecord] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps([r.to_dict() for r in self.rounds], indent=2, allow_nan=False)

    def save(self, path: str | Path) -> Path:
        """Write ``history.json`` into directory ``path`` (created if needed)."""
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        target = out / "history.json"
        target.write_text(self.to_json() + "\n")
        return target

    def metric(self, section: str, name: str) -> list[tuple[int, float]]:
        """``(round, value)`` pairs of one metric, e.g. ``metric("centralized", "accuracy")``."""
        out = []
        for r in self.rounds:
            value = getattr(r, section).get(name)
            if is_number(value):
                out.append((r.round, float(value)))
        return out


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
