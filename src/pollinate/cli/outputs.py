"""What a run leaves besides its terminal lines: its history (kept in memory, and appended
to ``--out``'s ``history.jsonl`` as each round ends), its final model (``--out``'s
``model.npz``) and its trackers (``--track``). Shared by ``run`` in simulation and on a hub;
``pollinate plot`` draws a history it left.

A tracker is secondary: one that fails is logged and left out for the rest of the run, which
goes on; a history that cannot be written stops the run, as a full disk should.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from pollinate.artifacts import MODEL_FILE, save_arrays
from pollinate.cli.console import console, fail
from pollinate.loop.events import Event, RoundFinished
from pollinate.loop.history import History, RoundRecord
from pollinate.loop.history_writer import HistoryWriter
from pollinate.records import Arrays
from pollinate.text import MAX_LINE, inert
from pollinate.tracking import Tracker

logger = logging.getLogger(__name__)


class RunOutputs:
    """Keeps ``history`` as rounds end and hands each round on; ``finish`` saves the model.

    Use it as the run's event subscriber (simulation), or call ``add`` with each round
    record a hub streams.
    """

    def __init__(self, history: History, out: Path | None, trackers: Sequence[Tracker] = ()):
        self.history, self.out = history, out
        self.writer = HistoryWriter(out, history) if out is not None else None
        self.trackers = list(trackers)
        self.model: Path | None = None
        """The final model in ``--out``, once ``finish`` saved it."""
        self._each_tracker("start", history)

    def __call__(self, event: Event) -> None:
        if isinstance(event, RoundFinished):
            self.add(event.record)

    def add(self, record: RoundRecord) -> None:
        """A round ended (or was run again after a hub restart: it replaces)."""
        self.history.with_round(record)
        if self.writer is not None:
            self.writer.append(record)
        self._each_tracker("log_round", record)

    def finish(self, arrays: Arrays | None, status: str) -> Path | None:
        """The run ended: save ``arrays`` (the final model) to ``--out``, give the trackers
        the file, close the history. Returns the model's path in ``--out``, if saved."""
        if self.writer is not None:
            self.writer.close()
        if arrays is not None and self.out is not None:
            self.model = save_arrays(arrays, self.out / MODEL_FILE)
        if arrays is None or self.model is not None or not self.trackers:
            self._each_tracker("finish", self.model, status)
            return self.model
        with tempfile.TemporaryDirectory(prefix="pollinate-model-") as scratch:
            self._each_tracker("finish", save_arrays(arrays, Path(scratch) / MODEL_FILE), status)
        return None

    def _each_tracker(self, method: str, *args: object) -> None:
        for tracker in list(self.trackers):
            try:
                getattr(tracker, method)(*args)
            except Exception as exc:  # a tracker's library or store failed: the run goes on
                self.trackers.remove(tracker)
                logger.error(
                    "--track: %s failed, left out from now on: %s",
                    type(tracker).__name__,
                    inert(f"{type(exc).__name__}: {exc}", MAX_LINE),
                )


def plot_command(
    history: Annotated[
        Path,
        typer.Argument(help="A run's history.jsonl (or an older history.json), or its --out dir."),
    ],
    out: Annotated[
        Path | None,
        typer.Option(help="The PNG to write [default: curves.png beside the history]."),
    ] = None,
) -> None:
    """Draw every metric of a run per round (centralized, federated, fit) to a PNG."""
    try:
        loaded = History.load(history)
    except (OSError, ValueError) as exc:
        raise fail(f"{history}: {exc}") from None
    target = out or (history if history.is_dir() else history.parent) / "curves.png"
    try:
        from pollinate.plot import plot_history  # matplotlib, only when drawing

        plot_history(loaded, target)
    except (ImportError, OSError) as exc:
        raise fail(exc) from None
    console.print(Text(f"curves of {len(loaded.rounds)} rounds written to {target}"))
