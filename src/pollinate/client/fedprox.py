"""FedProx's proximal term for client training loops (Li et al. 2020, "Federated
Optimization in Heterogeneous Networks").

Each client minimises ``h(w) = F_k(w) + (mu / 2) * ||w - w_t||^2`` where ``w_t`` is the global
model it received; the term keeps local models near the global one when data or work is
heterogeneous. The strategy sends ``mu`` as ``config["proximal_mu"]``.

For a NumPy loop, add ``proximal_gradient`` to the loss gradient; for a PyTorch loop, add
``proximal_term`` to the loss before ``backward()``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from pollinate.records import Config, same_arrays

PROXIMAL_MU_KEY = "proximal_mu"


def proximal_mu(config: Config) -> float:
    """The ``mu`` the strategy sent, or 0.0 when the run does not use FedProx."""
    return float(config.get(PROXIMAL_MU_KEY, 0.0))


def proximal_gradient(
    local: Mapping[str, np.ndarray], global_: Mapping[str, np.ndarray], mu: float
) -> dict[str, np.ndarray]:
    """Gradient of ``(mu / 2) * ||w - w_t||^2``, i.e. ``mu * (w - w_t)``, per array.

    >>> g = proximal_gradient({"w": np.array([1.0, 2.0])}, {"w": np.zeros(2)}, mu=0.5)
    >>> g["w"].tolist()
    [0.5, 1.0]
    """
    if same_arrays(global_, local):
        raise ValueError(
            "proximal_gradient got the same arrays as the local and the global weights: the "
            "client trains the arrays it received in place, so the term would be 0.\n"
            "Hint: keep the global ones first: global_ = arrays.copy()"
        )
    return {name: mu * (w - global_[name]) for name, w in local.items()}


def proximal_term(params: Iterable[Any], global_params: Iterable[Any], mu: float) -> Any:
    """``(mu / 2) * sum ||w - w_t||^2`` over PyTorch tensors, differentiable in ``params``.

    ``global_params`` must be detached copies taken before local training, e.g.
    ``[p.detach().clone() for p in model.parameters()]``.
    """
    total: Any = 0.0
    for w, w_t in zip(params, global_params, strict=True):
        total = total + (w - w_t).pow(2).sum()
    return (mu / 2.0) * total
