"""Datasets for simulation: split one dataset across federated clients.

``from pollinate.datasets import dirichlet`` and friends; see :mod:`pollinate.datasets.partition`.
"""

from pollinate.datasets.partition import by_group, dirichlet, iid, label_counts, shards

__all__ = ["by_group", "dirichlet", "iid", "label_counts", "shards"]
