"""Secure aggregation in the manner of SecAgg+: the server learns only the sum of the updates.

Bell et al. 2020, "Secure Single-Server Aggregation with (Poly)Logarithmic Overhead" (CCS'20),
building on Bonawitz et al. 2017, "Practical Secure Aggregation for Privacy-Preserving Machine
Learning" (CCS'17). This module is the public face; the parts live beside it:

- ``config``: :class:`SecAggConfig` and the inequalities it enforces;
- ``field``: quantization into ``Z / 2**b``, AES-CTR mask expansion;
- ``graph``: the sparse random neighbour graph;
- ``crypto``: X25519, AES-GCM, node-key signatures, Shamir sharing (pycryptodome);
- ``messages``: what travels, and :class:`SecAggError`;
- ``client`` / ``server``: the two state machines;
- ``codec``, ``update``, ``node``, ``identity``: the stages as Messages, a client's weighted
  change as one vector, a node's side of the protocol, and who signs (a node certificate in
  deployment, a ``KeyRing`` in simulation).

Runs turn it on with ``ServerApp(secure_aggregation=SecAggConfig())``, in simulation and in
deployment alike (docs/privacy-secagg.md). pycryptodome (Shamir sharing) is a core
dependency.

>>> from cryptography.hazmat.primitives.asymmetric import ed25519
>>> import numpy as np
>>> ids, seed = [1, 2, 3], bytes(32)
>>> keys = {u: ed25519.Ed25519PrivateKey.generate() for u in ids}
>>> peers = {u: k.public_key() for u, k in keys.items()}
>>> config = SecAggConfig(threshold_fraction=1.0, max_dropout_fraction=0.0)
>>> clients = [SecAggClient(u, keys[u], peers, ids, seed, config) for u in ids]
>>> server = SecAggServer(ids, seed, config)
>>> adverts = server.relay_adverts([c.advertise_keys() for c in clients])
>>> inbox = server.relay_shares([s for c in clients for s in c.share_keys(adverts[c.client])])
>>> for c in clients:
...     server.receive_masked(c.masked_input(np.array([0.5, -1.0]), inbox[c.client]))
>>> request = server.unmask_request()
>>> result = server.finish(request, [c.unmask(request) for c in clients])
>>> np.round(result.values, 4).tolist()
[1.5, -3.0]
"""

from __future__ import annotations

from pollinate.secagg.client import SecAggClient
from pollinate.secagg.config import SecAggConfig
from pollinate.secagg.messages import (
    AggregateSum,
    EncryptedShare,
    KeyAdvert,
    MaskedInput,
    SecAggError,
    ShareReveal,
    UnmaskRequest,
)
from pollinate.secagg.server import SecAggServer

__all__ = [
    "AggregateSum",
    "EncryptedShare",
    "KeyAdvert",
    "MaskedInput",
    "SecAggClient",
    "SecAggConfig",
    "SecAggError",
    "SecAggServer",
    "ShareReveal",
    "UnmaskRequest",
]
