"""``partition_summary``: the printed table, the returned counts, the PNG, and docs/datasets.md."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, Features
from matplotlib.image import imread

from pollinate.datasets import dirichlet, label_counts, partition_summary, shards

DOCS_PAGE = Path(__file__).resolve().parents[2] / "docs" / "datasets.md"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

LABELS = np.repeat(np.arange(4), 10)
PARTS = shards(LABELS, 4, 1, seed=0)  # one class per client


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """rich wraps a table wider than the terminal; a wide one keeps each row on one line."""
    monkeypatch.setenv("COLUMNS", "200")


def printed_rows(out: str) -> dict[str, list[str]]:
    """The table's rows by their first cell (client id or 'all'), split into cells."""
    rows = {}
    for line in out.splitlines():
        cells = line.split()
        if cells and (cells[0].isdigit() or cells[0] == "all"):
            rows[cells[0]] = cells[1:]
    return rows


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the PNG's signature and IHDR chunk."""
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_SIGNATURE and head[12:16] == b"IHDR"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


# --- the table and the counts --------------------------------------------------------------------


def test_returns_the_label_counts(capsys: pytest.CaptureFixture[str]) -> None:
    parts = dirichlet(LABELS, 5, alpha=1.0, seed=0)
    counts = partition_summary(LABELS, parts)
    np.testing.assert_array_equal(counts, label_counts(LABELS, parts))
    assert counts.dtype == np.int64


def test_prints_counts_size_and_skew_per_client(capsys: pytest.CaptureFixture[str]) -> None:
    counts = partition_summary(LABELS, PARTS, title="Shards, one class each")
    out = capsys.readouterr().out
    rows = printed_rows(out)
    assert "Shards, one class each" in out
    assert out.split("\n")[1].split() == ["client", "0", "1", "2", "3", "size", "skew"]
    for k in range(4):
        cells = rows[str(k)]
        assert [int(c) for c in cells[:4]] == counts[k].tolist()
        assert cells[4] == "10"
        assert cells[5] == "0.75"  # one class of four equal ones: 1 - 1/4
    assert rows["all"] == ["10", "10", "10", "10", "40", "0.75"]


def test_skew_is_the_hand_computed_distance_from_the_dataset_mix(
    capsys: pytest.CaptureFixture[str],
) -> None:
    labels = np.array([0, 0, 0, 1, 0, 1, 0, 0])  # overall mix (3/4, 1/4)
    partition_summary(labels, [np.array([0, 1, 2]), np.array([3]), np.array([4, 5, 6, 7])])
    rows = printed_rows(capsys.readouterr().out)
    # (1, 0): 0.5 * (1/4 + 1/4); (0, 1): 1 - 1/4; (3/4, 1/4): the dataset's own mix
    assert [rows[k][-1] for k in ("0", "1", "2")] == ["0.25", "0.75", "0.00"]
    assert rows["all"][-1] == "0.33"


def test_an_empty_client_has_no_skew(capsys: pytest.CaptureFixture[str]) -> None:
    parts = [np.arange(40), np.array([], dtype=np.int64)]
    counts = partition_summary(LABELS, parts)
    rows = printed_rows(capsys.readouterr().out)
    assert counts[1].tolist() == [0, 0, 0, 0]
    assert rows["1"] == ["0", "0", "0", "0", "0", "-"]
    assert rows["all"][-1] == "0.00"


def test_string_labels_are_columns_in_sorted_order(capsys: pytest.CaptureFixture[str]) -> None:
    animals = np.array(["emu", "cat", "dog", "cat", "emu", "emu"])
    counts = partition_summary(animals, [np.array([0, 1, 2]), np.array([3, 4, 5])])
    header = capsys.readouterr().out.split("\n")[1].split()
    assert header == ["client", "cat", "dog", "emu", "size", "skew"]
    assert counts.tolist() == [[1, 1, 1], [1, 0, 2]]


def test_a_dataset_column_is_headed_by_its_class_names(capsys: pytest.CaptureFixture[str]) -> None:
    names = ["ant", "bee", "cow", "doe", "elk"]  # "elk" never occurs: it still gets a column
    ds = Dataset.from_dict(
        {"label": LABELS.tolist()}, features=Features({"label": ClassLabel(names=names)})
    )
    counts = partition_summary(ds, PARTS, column="label")
    header = capsys.readouterr().out.split("\n")[1].split()
    assert header == ["client", *names, "size", "skew"]
    np.testing.assert_array_equal(counts, label_counts(LABELS, PARTS, num_classes=5))


def test_indices_outside_the_labels_are_refused() -> None:
    with pytest.raises(ValueError, match=r"(?s)partition 0 .*\[40\].*Hint: "):
        partition_summary(LABELS, [np.array([40])])


# --- the plot ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("clients", "width"), [(4, 640), (12, 640), (40, 1560), (100, 1600)])
def test_plot_writes_a_png_sized_for_the_clients(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], clients: int, width: int
) -> None:
    labels = np.repeat(np.arange(25), 40)  # 25 labels: more than tab20 has colours
    path = tmp_path / "split.png"
    partition_summary(labels, dirichlet(labels, clients, alpha=0.5, min_size=0), plot=path)
    assert png_size(path) == (width, 480)
    pixels = imread(path)
    assert pixels.shape == (480, width, 4)
    assert (pixels[..., :3] < 0.9).any(axis=-1).mean() > 0.2  # bars were drawn, not a blank


def test_plot_accepts_a_string_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    partition_summary(LABELS, PARTS, plot=str(tmp_path / "split.png"))
    assert png_size(tmp_path / "split.png") == (640, 480)


def test_without_matplotlib_the_plot_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)  # what an uninstalled package looks like
    with pytest.raises(ImportError, match=r"(?s)matplotlib.*Hint: pip install 'pollinate\[plot\]'"):
        partition_summary(LABELS, PARTS, plot=tmp_path / "split.png")
    assert not (tmp_path / "split.png").exists()


# --- docs/datasets.md ----------------------------------------------------------------------------


def python_blocks(page: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page, flags=re.S)


def test_docs_page_runs_as_written_and_shows_its_real_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # the page writes split.png in the working directory
    page = DOCS_PAGE.read_text()
    namespace: dict[str, object] = {"__name__": "docs"}
    for block in python_blocks(page):
        exec(compile(block, str(DOCS_PAGE), "exec"), namespace)
    assert png_size(tmp_path / "split.png") == (640, 480)
    shown = re.search(r"```text\n(.*?)```", page, flags=re.S)
    assert shown is not None
    printed = [line.rstrip() for line in capsys.readouterr().out.splitlines()]
    for line in shown.group(1).splitlines():
        assert line.rstrip() in printed, f"docs/datasets.md shows a line not printed: {line!r}"


def test_docs_figure_is_a_small_png_of_the_documented_size() -> None:
    figure = DOCS_PAGE.parent / "img" / "partition-summary.png"
    assert "img/partition-summary.png" in DOCS_PAGE.read_text()
    assert png_size(figure) == (640, 480)
    assert figure.stat().st_size < 50_000
