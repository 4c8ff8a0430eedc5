"""pollinate.plot: a run's curves drawn by real matplotlib into a real PNG, and text from a
file drawn literally (never as mathtext)."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pollinate.loop.history import History, RoundRecord
from pollinate.plot import MAX_PANELS, metric_curves, plot_history

PNG = b"\x89PNG\r\n\x1a\n"


def run(rounds: int = 8) -> History:
    records = [RoundRecord(round=0, centralized={"loss": 2.3, "accuracy": 0.1})]
    for r in range(1, rounds + 1):
        records.append(
            RoundRecord(
                round=r,
                replies=10 - r % 3,
                failures=r % 3,
                fit={"train_loss": 2 / r},
                evaluate={"loss": 2.2 / r, "accuracy": 1 - 0.8 / r},
                centralized={"loss": 2.1 / r, "accuracy": 1 - 0.9 / r, "note": "text"},
            )
        )
    return History(records, app="demo", seed=3, strategy="FedAvg")


def pixels(path: Path) -> np.ndarray:
    """The PNG's pixels, as matplotlib reads them back (RGBA floats in [0, 1])."""
    from matplotlib.image import imread

    return np.asarray(imread(path))


def test_every_metric_has_a_panel_with_a_line_per_section(tmp_path: Path) -> None:
    curves = metric_curves(run())
    assert list(curves) == ["loss", "accuracy", "train_loss"]
    assert list(curves["loss"]) == ["centralized", "evaluate"]
    assert curves["loss"]["centralized"][0] == (0, 2.3)
    assert "note" not in curves  # text is no curve


def test_the_png_is_drawn_whole(tmp_path: Path) -> None:
    path = plot_history(run(), tmp_path / "curves.png")
    data = path.read_bytes()
    assert data[:8] == PNG and len(data) > 20_000
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1260, 640)  # 3 panels + replies: 3 columns, 2 rows at 100 dpi
    image = pixels(path)
    assert image.shape == (640, 1260, 4) and image[..., :3].std() > 0.05  # not a blank canvas
    assert coloured(image) > 0.005  # the curves (0.9%): axes and text are black and grey
    blank = plot_history(History(), tmp_path / "blank.png")  # a replies panel, no curve
    assert coloured(pixels(blank)) < 0.002  # its legend's swatches alone (0.09%)


def coloured(image: np.ndarray) -> float:
    """The fraction of pixels that are neither white, black nor grey."""
    rgb = image[..., :3]
    return float(((rgb.max(axis=-1) - rgb.min(axis=-1)) > 0.3).mean())


def test_names_from_a_file_are_drawn_literally_and_panels_are_bounded(tmp_path: Path) -> None:
    hostile = {f"$\\frac{{{i}}}{{$ metric {i}\x1b[31m": float(i) for i in range(MAX_PANELS + 5)}
    history = History([RoundRecord(round=1, evaluate=hostile)], app="$x^")
    path = plot_history(history, tmp_path / "hostile.png")  # mathtext would raise here
    assert path.read_bytes()[:8] == PNG


def test_importing_pollinate_does_not_import_matplotlib() -> None:
    code = "import sys, pollinate, pollinate.cli.outputs; print('matplotlib' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "False", done.stderr


def test_without_matplotlib_the_error_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"Hint: pip install 'pollinate\[plot\]'"):
        plot_history(run(), tmp_path / "x.png")
