"""Hugging Face ``datasets`` glue: partition a ``datasets.Dataset`` and split it per client.

The partitioners take a ``Dataset`` wherever they take labels or groups, with ``column=``
naming the column to read, and return the same index arrays as for that column as a NumPy
array; ``split_dataset`` turns those arrays into one ``Dataset`` per client.

This module never imports ``datasets``: an object can only be a ``Dataset`` if the user has
imported the library, so it is looked up in ``sys.modules``. A column is read through Arrow,
one column only and without Python lists, so partitioning an image dataset never decodes an
image (``ds.with_format("numpy")[column]`` would iterate row by row: ~40 s per million rows).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from datasets import Dataset
    from typing_extensions import TypeIs


def is_dataset(obj: object) -> TypeIs[Dataset]:
    """True if ``obj`` is a map-style ``datasets.Dataset`` (without importing ``datasets``)."""
    module = sys.modules.get("datasets")
    return module is not None and isinstance(obj, module.Dataset)


def as_array(data: Any, column: str | None, name: str) -> npt.NDArray[Any]:
    """The values to partition: ``data`` as an array, or its column ``column`` for a Dataset."""
    if is_dataset(data):
        return read_column(data, column, name)
    _reject_other_hf_types(data, name)
    if column is not None:
        raise TypeError(
            f"column={column!r} names a column of a Hugging Face Dataset, but {name} is a "
            f"{type(data).__name__}.\nHint: pass the Dataset itself, or drop column= and pass "
            f"the {name} as an array."
        )
    return np.asarray(data)


def read_column(dataset: Dataset, column: str | None, name: str) -> npt.NDArray[Any]:
    """One column of ``dataset`` as a 1-D NumPy array, read through Arrow.

    String columns come back as a ``str`` array (as ``np.array(list_of_str)`` gives), so a
    Dataset and its column as NumPy give the same partitions.
    """
    columns = dataset.column_names
    if column is None:
        raise ValueError(
            f"{name} is a Hugging Face Dataset with columns {columns!r}: say which column "
            f"holds the {name}.\nHint: pass column=, e.g. column={_guess(dataset)!r}."
        )
    if column not in columns:
        raise ValueError(
            f"column {column!r} is not in the dataset; its columns are {columns!r}.\n"
            f"Hint: pass one of them, e.g. column={_guess(dataset)!r}."
        )
    import pyarrow.types

    values = dataset.with_format("arrow")[column]
    if pyarrow.types.is_nested(values.type):
        raise ValueError(
            f"column {column!r} holds {values.type} values, not one value per row.\n"
            "Hint: name a column of scalars (ints or strings), e.g. the label column."
        )
    if values.null_count:
        raise ValueError(
            f"column {column!r} has {values.null_count} missing values: a row without a "
            f"value cannot be placed.\nHint: drop those rows first, e.g. "
            f"ds.filter(lambda row: row[{column!r}] is not None)."
        )
    array = values.to_numpy()
    if pyarrow.types.is_string(values.type) or pyarrow.types.is_large_string(values.type):
        return array.astype(str)
    return array


def class_names(data: Any, column: str | None) -> list[str] | None:
    """The names of a ``ClassLabel`` column (index = class id), or None for any other column."""
    if not is_dataset(data) or column is None:
        return None
    names = getattr(data.features.get(column), "names", None)
    return list(names) if names is not None else None


def split_dataset(dataset: Dataset, partitions: Sequence[npt.ArrayLike]) -> list[Dataset]:
    """One ``Dataset`` per partition, ``dataset.select(indices)``, in partition order.

    ``select`` keeps an index mapping over the same Arrow table, so no row is copied: a client
    reads only its own rows. Pass the partitions made from this same dataset.

    Example:
        >>> from datasets import Dataset
        >>> from pollinate.datasets import shards
        >>> ds = Dataset.from_dict({"x": [10, 11, 12, 13], "label": [0, 0, 1, 1]})
        >>> clients = split_dataset(ds, shards(ds, 2, 1, column="label"))
        >>> [client.to_dict()["x"] for client in clients]
        [[12, 13], [10, 11]]
    """
    if not is_dataset(dataset):
        _reject_other_hf_types(dataset, "dataset")
        raise TypeError(
            f"split_dataset needs a Hugging Face datasets.Dataset, got "
            f"{type(dataset).__name__}.\nHint: for NumPy data index it directly: "
            "[x[idx] for idx in partitions]."
        )
    n_rows = len(dataset)
    for k, part in enumerate(partitions):
        idx = np.asarray(part)
        if idx.ndim != 1 or (idx.size and not _indices_within(idx, n_rows)):
            raise ValueError(
                f"partition {k} is not a 1-D array of row indices in 0..{n_rows - 1}: "
                f"{idx!r}.\nHint: pass the partitions made from this same dataset."
            )
    return [dataset.select(np.asarray(part)) for part in partitions]


def _indices_within(idx: npt.NDArray[Any], n_rows: int) -> bool:
    return idx.dtype.kind in "iu" and int(idx.min()) >= 0 and int(idx.max()) < n_rows


def _guess(dataset: Dataset) -> str:
    """The column a user most likely means: ``label`` if present, else the first column."""
    columns = dataset.column_names
    return "label" if "label" in columns or not columns else str(columns[0])


def _reject_other_hf_types(data: object, name: str) -> None:
    """A DatasetDict or a streaming dataset cannot be split by index: say what to pass instead."""
    module = sys.modules.get("datasets")
    if module is None:
        return
    if isinstance(data, module.DatasetDict | module.IterableDatasetDict):
        raise TypeError(
            f"{name} is a {type(data).__name__} with splits {list(data)!r}, but partitioning "
            f"works on one split.\nHint: pass one split, e.g. ds[{next(iter(data), 'train')!r}]."
        )
    if isinstance(data, module.IterableDataset):
        raise TypeError(
            f"{name} is a streaming IterableDataset, which has no length and no random access, "
            "so it cannot be split by index.\nHint: load it without streaming=True."
        )
