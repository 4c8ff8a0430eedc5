"""Trackers: a run's parameters, per-round metrics and final model, sent to MLflow or
TensorBoard as the run goes (``pollinate run APP --track mlflow:DIR``).

A ``Tracker`` is fed what the run records, never asked about the run: ``start`` with the
history's header (what ran), ``log_round`` with each ``RoundRecord`` as its round ends (in
simulation from the loop's ``RoundFinished`` events; with ``--hub`` from the round records
the hub streams), and ``finish`` with the final model file. Each backend is a module of its
own, imported only when asked for: ``import pollinate`` imports neither library.

>>> tracker_for("neptune:runs")
Traceback (most recent call last):
...
ValueError: --track 'neptune:runs': unknown tracker 'neptune'; one of mlflow, tensorboard.
Hint: --track mlflow:DIR or --track tensorboard:DIR
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Protocol

from pollinate.loop.history import History, RoundRecord


class Tracker(Protocol):
    """Where a run's parameters, metrics and model go, besides its ``--out``."""

    def start(self, history: History) -> None:
        """The run began: ``history``'s header is what ran (its rounds are empty)."""

    def log_round(self, record: RoundRecord) -> None:
        """A round ended."""

    def finish(self, model: Path | None, status: str) -> None:
        """The run ended (``status``: finished, failed or interrupted), with the final
        model's ``.npz`` file if one was saved."""


_BACKENDS = {
    "mlflow": ("pollinate.tracking.mlflow", "MLflowTracker", "mlflow"),
    "tensorboard": ("pollinate.tracking.tensorboard", "TensorBoardTracker", "tensorboard"),
}
TRACKERS: tuple[str, ...] = tuple(_BACKENDS)


def tracker_for(spec: str) -> Tracker:
    """The tracker ``--track KIND:DIR`` names; ValueError with a Hint if it names none or
    its library is not installed."""
    kind, _, target = spec.partition(":")
    hint = "Hint: --track mlflow:DIR or --track tensorboard:DIR"
    if kind not in _BACKENDS:
        raise ValueError(
            f"--track {spec!r}: unknown tracker {kind!r}; one of {', '.join(TRACKERS)}.\n{hint}"
        )
    if not target:
        raise ValueError(f"--track {spec!r} names no directory.\n{hint}")
    module_name, class_name, extra = _BACKENDS[kind]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(
            f"--track {kind} needs the {exc.name or kind} package, which is not installed.\n"
            f"Hint: pip install 'pollinate[{extra}]'"
        ) from None
    tracker: Tracker = getattr(module, class_name)(target)
    return tracker


__all__ = ["TRACKERS", "Tracker", "tracker_for"]
