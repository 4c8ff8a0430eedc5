"""A run's curves as a PNG: every metric per round, centralized, federated and fit
(``pollinate plot HISTORY``).

One panel per metric name (``loss``, ``accuracy``, ...) with a line per section that has
it, and a last panel with each round's replies and failures. Drawn with matplotlib's
object API (a ``Figure`` of its own, never ``pyplot``'s global state or backend), imported
only when called: ``import pollinate`` does not import matplotlib.

Metric names come from nodes: shown cut to a few dozen characters and never as mathtext
(``$`` is escaped), and at most ``MAX_PANELS`` panels are drawn.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from pollinate.checks import is_number
from pollinate.loop.history import History

if TYPE_CHECKING:  # matplotlib is imported only when drawing
    from matplotlib.axes import Axes

MAX_PANELS = 24
"""The most metric panels one PNG holds; the others are named in its title."""
SECTIONS = {"centralized": "centralized", "evaluate": "federated", "fit": "fit"}
_COLUMNS = 3


def plot_history(history: History, path: str | Path) -> Path:
    """Draw ``history``'s curves to the PNG ``path``; returns it.

    >>> import tempfile
    >>> from pollinate.loop.history import RoundRecord
    >>> h = History([RoundRecord(round=r, centralized={"loss": 1 / (r + 1)}) for r in range(3)])
    >>> plot_history(h, tempfile.mkdtemp() + "/curves.png").read_bytes()[:4]
    b'\\x89PNG'
    """
    figure_module = _matplotlib_figure()
    curves = metric_curves(history)
    names = list(curves)[:MAX_PANELS]
    panels = len(names) + 1
    rows = math.ceil(panels / _COLUMNS)
    columns = min(panels, _COLUMNS)
    figure = figure_module.Figure(figsize=(4.2 * columns, 3.2 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax, name in zip(axes, names, strict=False):
        for section, points in curves[name].items():
            rounds, values = zip(*points, strict=True)
            ax.plot(rounds, values, marker="o", markersize=3, label=SECTIONS[section])
        ax.set_title(_label(name))
        ax.set_xlabel("round")
        ax.legend(fontsize="small")
    _replies_panel(axes[len(names)], history)
    for ax in axes[panels:]:
        ax.set_visible(False)
    figure.suptitle(_title(history, len(curves) - len(names)))
    target = Path(path)
    figure.savefig(target, format="png", dpi=100)
    return target


def metric_curves(history: History) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """``{metric name: {section: [(round, value), ...]}}`` for every finite numeric metric."""
    curves: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for record in history.rounds:
        for section in SECTIONS:
            for name, value in getattr(record, section).items():
                if is_number(value) and math.isfinite(value):
                    points = curves.setdefault(name, {}).setdefault(section, [])
                    points.append((record.round, float(value)))
    return curves


def _replies_panel(ax: Axes, history: History) -> None:
    done = [r for r in history.rounds if r.round > 0]
    rounds = [r.round for r in done]
    ax.plot(rounds, [r.replies for r in done], marker="o", markersize=3, label="replies")
    ax.plot(rounds, [r.failures for r in done], marker="x", markersize=3, label="failures")
    ax.set_title("replies and failures (fit)")
    ax.set_xlabel("round")
    ax.legend(fontsize="small")


def _title(history: History, left_out: int) -> str:
    what = " ".join(filter(None, [history.app, history.strategy, history.run_id]))
    seed = f"seed {history.seed}" if history.seed is not None else ""
    more = f"({left_out} more metrics not drawn)" if left_out else ""
    return _label(" · ".join(filter(None, [what, seed, more])) or "pollinate run", 120)


def _label(text: str, limit: int = 40) -> str:
    """Text from a file, as matplotlib shows it literally: cut, one line, no mathtext."""
    shown = text if len(text) <= limit else text[: limit - 1] + "…"
    return "".join(c if c.isprintable() else "?" for c in shown).replace("$", r"\$")


def _matplotlib_figure() -> ModuleType:
    try:
        import matplotlib.figure
    except ImportError:
        raise ImportError(
            "pollinate plot draws with matplotlib, which is not installed.\n"
            "Hint: pip install 'pollinate[plot]'"
        ) from None
    return matplotlib.figure
