"""The partitioners on a Hugging Face ``datasets.Dataset``: the same splits as on NumPy labels.

Every dataset here is built in memory with ``Dataset.from_dict``: nothing is downloaded.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Sequence, Value

from pollinate.datasets import by_group, dirichlet, iid, label_counts, shards, split_dataset

Partitions = list[npt.NDArray[np.int64]]

ANIMALS = np.array(["cat", "dog", "emu", "fox", "gnu"])
RNG = np.random.default_rng(7)
LABELS = RNG.permutation(np.repeat(np.arange(5), 24))  # 120 rows, 5 classes of 24
HOSPITALS = RNG.choice(np.array(["h1", "h2", "h10", "clinic"]), size=LABELS.size)


def make_dataset() -> Dataset:
    """Pixels, a ClassLabel label, the same labels as strings, and a hospital id per row."""
    features = Features(
        {
            "pixels": Sequence(Value("float32"), length=4),
            "label": ClassLabel(names=ANIMALS.tolist()),
            "animal": Value("string"),
            "hospital": Value("string"),
        }
    )
    return Dataset.from_dict(
        {
            "pixels": RNG.random((LABELS.size, 4), dtype=np.float32).tolist(),
            "label": LABELS.tolist(),
            "animal": ANIMALS[LABELS].tolist(),
            "hospital": HOSPITALS.tolist(),
        },
        features=features,
    )


DS = make_dataset()


def same(a: Partitions, b: Partitions) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


# --- the same partitions as on the NumPy column --------------------------------------------------

ON_BOTH: dict[str, Callable[[Any, str | None], Partitions]] = {
    "dirichlet": lambda y, column: dirichlet(y, 6, alpha=0.5, seed=3, column=column),
    "shards": lambda y, column: shards(y, 6, 2, seed=3, column=column),
    "by_group": lambda y, column: by_group(y, column=column)[1],
}


@pytest.mark.parametrize("name", ON_BOTH)
def test_class_label_column_gives_the_partitions_of_its_numpy_labels(name: str) -> None:
    assert same(ON_BOTH[name](DS, "label"), ON_BOTH[name](LABELS, None))


@pytest.mark.parametrize("name", ON_BOTH)
def test_string_column_gives_the_partitions_of_its_numpy_strings(name: str) -> None:
    assert same(ON_BOTH[name](DS, "animal"), ON_BOTH[name](ANIMALS[LABELS], None))


def test_iid_splits_the_rows_of_a_dataset() -> None:
    assert same(iid(DS, 7, seed=3), iid(LABELS.size, 7, seed=3))


def test_by_group_returns_the_group_values_as_numpy_would() -> None:
    values, parts = by_group(DS, column="hospital")
    expected_values, expected_parts = by_group(HOSPITALS)
    assert values.dtype.kind == "U"
    assert values.tolist() == expected_values.tolist() == ["clinic", "h1", "h10", "h2"]
    assert same(parts, expected_parts)


def test_a_shuffled_or_selected_dataset_is_read_in_its_own_row_order() -> None:
    # shuffle and select keep an index mapping over the original table: the column must follow it
    view = DS.shuffle(seed=1).select(range(10, 90))
    column = np.array(view.to_dict()["label"])
    assert same(dirichlet(view, 4, alpha=1.0, column="label"), dirichlet(column, 4, alpha=1.0))


def test_label_counts_of_a_class_label_column_has_one_column_per_class() -> None:
    parts = shards(DS, 4, 1, seed=0, column="label")
    np.testing.assert_array_equal(
        label_counts(DS, parts, column="label"), label_counts(LABELS, parts)
    )
    # Classes absent from the rows still get their column: the ClassLabel knows there are 5.
    first_two = DS.filter(lambda row: row["label"] < 2)
    assert label_counts(first_two, [np.arange(len(first_two))], column="label").shape == (1, 5)


def test_reads_a_column_through_arrow_not_python_lists() -> None:
    # Through Python lists (ds.with_format("numpy")[column]) 500k rows take ~20 s; Arrow, ~1 ms.
    big = Dataset.from_dict({"label": np.tile(np.arange(10), 50_000)})
    start = time.perf_counter()
    parts = dirichlet(big, 10, alpha=1.0, column="label")
    assert time.perf_counter() - start < 2.0
    assert sum(len(p) for p in parts) == 500_000


# --- split_dataset -------------------------------------------------------------------------------


def test_split_dataset_gives_each_client_its_rows_in_one_line() -> None:
    parts = dirichlet(DS, 5, alpha=0.5, seed=0, column="label")
    clients = split_dataset(DS, parts)
    assert [len(c) for c in clients] == [len(p) for p in parts]
    for client, part in zip(clients, parts, strict=True):
        assert client.features == DS.features
        assert client.to_dict() == DS.select(part).to_dict()
        assert client.to_dict()["label"] == LABELS[part].tolist()


def test_split_dataset_rejects_indices_from_another_dataset() -> None:
    with pytest.raises(ValueError, match=r"(?s)partition 1 .*0\.\.119.*Hint: "):
        split_dataset(DS, [np.array([0]), np.array([120])])


def test_split_dataset_needs_a_dataset() -> None:
    with pytest.raises(TypeError, match=r"(?s)got ndarray.*Hint: .*x\[idx\]"):
        split_dataset(LABELS, [np.arange(3)])  # type: ignore[arg-type]


# --- errors that teach ---------------------------------------------------------------------------


def test_missing_column_lists_the_dataset_columns() -> None:
    with pytest.raises(ValueError, match=r"(?s)'labels' is not in .*'pixels', 'label'.*Hint: "):
        dirichlet(DS, 5, alpha=0.5, column="labels")


def test_a_dataset_without_column_says_which_to_pass() -> None:
    with pytest.raises(ValueError, match=r"(?s)columns \['pixels'.*Hint: pass column=.*'label'"):
        shards(DS, 5, 2)


def test_column_with_numpy_labels_is_a_type_error() -> None:
    with pytest.raises(TypeError, match=r"(?s)column='label'.*ndarray.*Hint: "):
        dirichlet(LABELS, 5, alpha=0.5, column="label")


def test_a_dataset_dict_asks_for_one_split() -> None:
    splits = DatasetDict({"train": DS, "test": DS})
    with pytest.raises(TypeError, match=r"(?s)DatasetDict.*\['train', 'test'\].*ds\['train'\]"):
        dirichlet(splits, 5, alpha=0.5, column="label")


def test_a_column_of_lists_is_refused() -> None:
    with pytest.raises(ValueError, match=r"(?s)'pixels' holds .*float.*Hint: "):
        by_group(DS, column="pixels")


def test_missing_values_are_refused_with_how_to_drop_them() -> None:
    holes = Dataset.from_dict({"label": [0, None, 1, None]})
    with pytest.raises(ValueError, match=r"(?s)2 missing values.*Hint: .*ds\.filter"):
        dirichlet(holes, 2, alpha=1.0, column="label")


def test_label_counts_of_strings_hints_class_encode_column() -> None:
    with pytest.raises(ValueError, match=r"(?s)dtype <U3.*class_encode_column\('animal'\)"):
        label_counts(DS, [np.arange(4)], column="animal")


def test_label_counts_of_unlabelled_rows_hints_dropping_them() -> None:
    test_split = Dataset.from_dict(
        {"label": [0, -1, 1]}, features=Features({"label": ClassLabel(names=["a", "b"])})
    )
    with pytest.raises(ValueError, match=r"(?s)minimum -1.*Hint: drop unlabelled rows"):
        label_counts(test_split, [np.arange(3)], column="label")


def test_importing_pollinate_datasets_imports_neither_datasets_nor_matplotlib() -> None:
    code = (
        "import sys, pollinate.datasets; "
        "print(sorted(m for m in ('datasets', 'matplotlib', 'pyarrow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
