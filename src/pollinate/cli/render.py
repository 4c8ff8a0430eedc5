"""Terminal rendering of a run: a progress bar per round, a line per round, a summary table.

Metric names and values come from nodes: they are rendered as ``Text`` (never markup) and
inert (``pollinate.text``), so a metric named ``[link=...]`` or holding a newline shows as
what it is.
"""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

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
            self.console.print(round_line(event.record))


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


def summary_table(history: History, width: int = 80) -> Table:
    """One row per round, a column per metric; fit metrics only when the terminal is wide."""
    sections = [("evaluate", "fed."), ("centralized", "central.")]
    if width >= 120:
        sections.insert(0, ("fit", "fit"))
    columns = [
        (section, key, f"{label}\n{_name(key)}")
        for section, label in sections
        for key in dict.fromkeys(k for r in history.rounds for k in getattr(r, section))
    ]
    if width < 120 and any(_EPSILON in r.fit for r in history.rounds):
        # the privacy spent matters on any terminal, unlike the other fit metrics
        columns.insert(0, ("fit", _EPSILON, "DP\nepsilon"))
    table = Table(title="run summary")
    for name in ["round", "ok", "failed", *[c[2] for c in columns], "s"]:
        table.add_column(Text(name), justify="right", no_wrap=True)
    for r in history.rounds:
        cells = [Text(_fmt(getattr(r, section).get(key, ""))) for section, key, _ in columns]
        table.add_row(str(r.round), str(r.replies), str(r.failures), *cells, f"{r.seconds:.2f}")
    return table


def _fmt(value: Scalar | str) -> str:
    return f"{value:.4f}" if isinstance(value, float) else inert(str(value))


def _name(key: str) -> str:
    return inert(key, MAX_NAME)
