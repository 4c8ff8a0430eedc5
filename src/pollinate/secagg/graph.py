"""Who masks with whom: the sparse random neighbour graph of SecAgg+.

Bell et al. 2020 (§4, "Harary graph with random permutation") place the ``n`` clients on a ring
in an order drawn from a public seed and join each to the ``k / 2`` clients on either side. Every
client has exactly ``k`` neighbours, and because the order is random, which clients a coalition
neighbours is random too. Each client computes the graph itself from the seed and the list of
participants, so the server cannot give different clients inconsistent neighbourhoods.

>>> g = neighbour_graph([1, 2, 3, 4, 5], k=2, seed=bytes(32))
>>> sorted(len(v) for v in g.values())
[2, 2, 2, 2, 2]
>>> all(u in g[v] for u in g for v in g[u])
True
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pollinate.secagg.field import expand_mask

__all__ = ["neighbour_graph"]


def neighbour_graph(clients: Sequence[int], k: int, seed: bytes) -> dict[int, tuple[int, ...]]:
    """Each client's ``k`` neighbours (sorted), from the public ``seed``; symmetric."""
    ids = sorted(set(clients))
    n = len(ids)
    if k >= n - 1:
        return {u: tuple(v for v in ids if v != u) for u in ids}
    # A random ring order: sort the clients by 64-bit keys from the seed's AES-CTR stream.
    order = [ids[i] for i in np.argsort(expand_mask(seed, n, 64), kind="stable")]
    neighbours: dict[int, set[int]] = {u: set() for u in ids}
    for position, u in enumerate(order):
        for step in range(1, k // 2 + 1):
            v = order[(position + step) % n]
            neighbours[u].add(v)
            neighbours[v].add(u)
    return {u: tuple(sorted(vs)) for u, vs in neighbours.items()}
