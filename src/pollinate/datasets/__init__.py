"""Datasets for simulation: split one dataset across federated clients.

``from pollinate.datasets import dirichlet`` and friends; see :mod:`pollinate.datasets.partition`.
They take NumPy labels or a Hugging Face ``datasets.Dataset`` (``column=`` names the label
column); ``split_dataset`` gives each client its ``Dataset`` and ``partition_summary`` shows the
split as a table and a chart.
"""

from pollinate.datasets.huggingface import split_dataset
from pollinate.datasets.partition import by_group, dirichlet, iid, label_counts, shards
from pollinate.datasets.summary import partition_summary

__all__ = [
    "by_group",
    "dirichlet",
    "iid",
    "label_counts",
    "partition_summary",
    "shards",
    "split_dataset",
]
