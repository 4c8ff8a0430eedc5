"""Terminal rendering of a run: a progress bar per round (on a terminal), a line per round
with its first failure reasons, and a summary at the end.

Every round is printed once, as complete lines: piped output (CI, ``tee``) is the same lines,
never wrapped or cut at the terminal's width (the console soft-wraps: ``console.py``).

Metric names and values come from nodes: they are rendered as ``Text`` (never markup) and
inert (``pollinate.text``), so a metric named ``[link=...]`` or holding a newline shows as
what it is.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from pollinate.checks import is_number
from pollinate.loop.events import Event, ReplyReceived, RoundFinished, StageStarted
from pollinate.loop.history import History, RoundRecord
from pollinate.records import Scalar
from pollinate.text import MAX_LINE, MAX_NAME, inert

# the fit metric DifferentialPrivacy reports each round (pollinate.dp)
_EPSILON = "dp_epsilon"


class RunProgress:
    """Turns run-loop events into a live progress display; use as a context manager."""

    def __init__(self, console: Console, num_rounds: int) -> None:
        self.console = console
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
            disable=not console.is_terminal,
        )
        self.rounds = self.progress.add_task("rounds", total=num_rounds, status="")
        self.stage = self.progress.add_task("round 1", total=None, status="", visible=False)
        self.failed = 0

    def __enter__(self) -> RunProgress:
        self.progress.__enter__()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.progress.__exit__(kind, exc, tb)

    def __call__(self, event: Event) -> None:
        if isinstance(event, StageStarted):
            self.failed = 0
            self.progress.reset(
                self.stage,
                total=event.tasks,
                visible=True,
                status="",
                description=f"round {event.round} {event.stage}",
            )
        elif isinstance(event, ReplyReceived):
            self.failed += not event.ok
            status = f"[red]{self.failed} failed" if self.failed else ""
            self.progress.advance(self.stage)
            self.progress.update(self.stage, status=status)
        elif isinstance(event, RoundFinished):
            if event.record.round > 0:
                self.progress.advance(self.rounds)
            for line in round_lines(event.record):
                self.console.print(line)


def round_lines(record: RoundRecord) -> list[Text]:
    """The round's line, then a line per distinct failure reason (the first few)."""
    return [round_line(record), *failure_lines(record)]


REASONS_SHOWN = 3
"""Distinct failure reasons a round's lines show; ``-v`` logs every failure."""


def failure_lines(record: RoundRecord, limit: int = REASONS_SHOWN) -> list[Text]:
    """``    12 x fit: client failed: ValueError: ...``: the round's first distinct failure
    reasons, counted. Reasons that differ only in their numbers (a node id, a line) count as
    one, shown as the first of them."""
    first: dict[tuple[str, str], str] = {}
    counts: Counter[tuple[str, str]] = Counter()
    for failure in record.failed:
        key = (failure.stage, re.sub(r"\d+", "#", failure.reason))
        first.setdefault(key, failure.reason)
        counts[key] += 1
    lines = [
        Text(f"    {counts[key]} x {key[0]}: {inert(first[key], _REASON_CHARS)}", "red")
        for key in list(first)[:limit]
    ]
    if len(first) > limit:
        others = sum(counts[key] for key in list(first)[limit:])
        lines.append(Text(f"    and {others} more failures for other reasons (-v shows each)"))
    return lines


_REASON_CHARS = 300


def round_line(record: RoundRecord) -> Text:
    """One line per round: replies, failures and the evaluation metrics."""
    parts = [Text(f"round {record.round:>3}"), Text(f"{record.replies} replies")]
    if record.failures - record.rejected:
        parts.append(Text(f"{record.failures - record.rejected} failed", "red"))
    if record.rejected:
        parts.append(Text(f"{record.rejected} rejected", "red"))
    if record.aborted is not None:
        parts.append(Text("model kept: secure aggregation aborted the round", "yellow"))
    elif not record.applied:
        parts.append(Text("model kept: too many failures", "yellow"))
    if record.resumed:
        parts.append(Text("resumed after a hub restart", "yellow"))
    for section, label in (("evaluate", "federated"), ("centralized", "centralized")):
        values = getattr(record, section)
        if values:
            shown = " ".join(f"{_name(k)} {_fmt(v)}" for k, v in values.items())
            parts.append(Text(inert(f"{label} {shown}", MAX_LINE)))
    if _EPSILON in record.fit:
        parts.append(Text(f"epsilon {_fmt(record.fit[_EPSILON])}"))
    parts.append(Text(f"{record.seconds:.2f}s"))
    return Text("  ").join(parts)


def summary(history: History, seconds: float) -> list[Text]:
    """The run in three lines: its best round, its final metrics, its rounds and time."""
    done = [r for r in history.rounds if r.round > 0]
    lines = []
    best = best_round(history)
    if best is not None:
        record, section, name = best
        value = _fmt(getattr(record, section)[name])
        what = f"{_SECTIONS[section]} {_name(name)} {value}"
        lines.append(Text(f"best round: {record.round} ({what})"))
    if done:
        lines.append(Text(inert(f"final (round {done[-1].round}): {_metrics(done[-1])}", MAX_LINE)))
    kept = sum(not r.applied for r in done)
    note = f", {kept} of them kept the previous model" if kept else ""
    lines.append(Text(f"{len(done)} rounds in {seconds:.1f}s{note}"))
    return lines


def nothing_applied(history: History) -> str | None:
    """Why a run that ran to its end failed: no round it ran was applied (None if one was)."""
    done = [r for r in history.rounds if r.round > 0]
    if not done or any(r.applied for r in done):
        return None
    reasons = [str(line) for line in failure_lines(done[-1])]
    why = ("; the last round's failures:\n" + "\n".join(reasons)) if reasons else ""
    return f"no round of {len(done)} was applied: the global model is the initial one{why}"


_SECTIONS = {"centralized": "centralized", "evaluate": "federated", "fit": "fit"}


def best_round(history: History) -> tuple[RoundRecord, str, str] | None:
    """The round with the best accuracy (centralized, else federated), else the lowest loss;
    with the section and metric that decided. None when no round has any."""
    for section, name, higher in (
        ("centralized", "accuracy", True),
        ("evaluate", "accuracy", True),
        ("centralized", "loss", False),
        ("evaluate", "loss", False),
    ):
        scored = [(float(v), r) for r, v in _values(history, section, name)]
        if scored:
            pick = max if higher else min
            return pick(scored, key=lambda item: item[0])[1], section, name
    return None


def _values(history: History, section: str, name: str) -> list[tuple[RoundRecord, float]]:
    out = []
    for record in history.rounds:
        value = getattr(record, section).get(name)
        if is_number(value) and not math.isnan(value):
            out.append((record, float(value)))
    return out


def _metrics(record: RoundRecord) -> str:
    parts = []
    for section in ("evaluate", "centralized"):
        values = getattr(record, section)
        if values:
            shown = " ".join(f"{_name(k)} {_fmt(v)}" for k, v in values.items())
            parts.append(f"{_SECTIONS[section]} {shown}")
    if _EPSILON in record.fit:
        parts.append(f"epsilon {_fmt(record.fit[_EPSILON])}")
    return ", ".join(parts) or "no metrics"


def _fmt(value: Scalar | str) -> str:
    return f"{value:.4f}" if isinstance(value, float) else inert(str(value))


def _name(key: str) -> str:
    return inert(key, MAX_NAME)
