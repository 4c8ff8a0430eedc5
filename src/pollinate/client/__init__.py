"""Client side: the user-facing client API and its helpers."""

from pollinate.client.client import (
    Client,
    ClientFn,
    Context,
    NumPyClient,
    handle,
    to_client,
)
from pollinate.client.fedprox import proximal_gradient, proximal_mu, proximal_term

__all__ = [
    "Client",
    "ClientFn",
    "Context",
    "NumPyClient",
    "handle",
    "proximal_gradient",
    "proximal_mu",
    "proximal_term",
    "to_client",
]
