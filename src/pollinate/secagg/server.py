"""The server side of SecAgg+: relay, sum the masked inputs, and remove the masks.

Bell et al. 2020, Alg. 2 (server), after Bonawitz et al. 2017, Fig. 4. With ``U2`` the clients
that shared their keys and ``U3`` those whose masked input arrived, the server computes

    z = sum_{u in U3} y_u - sum_{u in U3} PRG(b_u)
        - sum_{u in U2 \\ U3} sum_{v in N(u) ∩ U3} g_vu * PRG(s_vu)      mod R

where ``b_u`` and ``s_u`` are rebuilt from ``t`` Shamir shares revealed by ``u``'s neighbours.
Pairwise masks between survivors cancel in the sum; ``z`` is the exact sum of their quantized
inputs.

Invariants: masked inputs are folded into one running sum as they arrive (O(model) memory, not
O(clients x model)); a rebuilt mask key must match the public key its owner advertised, or the
round aborts naming that client; a client's input is counted at most once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from cryptography.hazmat.primitives.asymmetric import x25519

from pollinate.secagg.client import mask_seed
from pollinate.secagg.config import SecAggConfig
from pollinate.secagg.crypto import combine_secret, public_bytes
from pollinate.secagg.field import (
    FieldVector,
    add_mod,
    dequantize_sum,
    expand_mask,
    levels_for,
    sub_mod,
)
from pollinate.secagg.graph import neighbour_graph
from pollinate.secagg.messages import (
    AggregateSum,
    EncryptedShare,
    KeyAdvert,
    MaskedInput,
    SecAggError,
    Share,
    ShareReveal,
    UnmaskRequest,
)

__all__ = ["SecAggServer"]


class SecAggServer:
    """The server's part in one round. It sees public keys, ciphertexts and masked vectors."""

    def __init__(
        self, participants: Sequence[int], round_seed: bytes, config: SecAggConfig
    ) -> None:
        self.config = config
        self._round_seed = round_seed
        self._n = len(set(participants))
        self._graph = neighbour_graph(participants, config.neighbour_count(self._n), round_seed)
        self._threshold = config.threshold(self._n)
        self._adverts: dict[int, KeyAdvert] = {}
        self._relayed: set[tuple[int, int]] = set()  # (sender, recipient) of relayed shares
        self._total: FieldVector | None = None
        self._masked: set[int] = set()

    def relay_adverts(self, adverts: Iterable[KeyAdvert]) -> dict[int, dict[int, KeyAdvert]]:
        """Step 1 -> 2: to each client that advertised, the adverts of its neighbours."""
        for advert in adverts:
            if advert.client in self._graph:
                self._adverts[advert.client] = advert
        return {
            u: {v: self._adverts[v] for v in self._graph[u] if v in self._adverts}
            for u in self._adverts
        }

    def relay_shares(self, shares: Iterable[EncryptedShare]) -> dict[int, list[EncryptedShare]]:
        """Step 2 -> 3: each ciphertext to its recipient, unopened."""
        inbox: dict[int, list[EncryptedShare]] = {}
        for share in shares:
            if share.recipient in self._graph.get(share.sender, ()):
                self._relayed.add((share.sender, share.recipient))
                inbox.setdefault(share.recipient, []).append(share)
        return inbox

    def receive_masked(self, masked: MaskedInput) -> None:
        """Step 3: fold ``y_u`` into the running sum (once per client)."""
        u = masked.client
        if u in self._masked or not any(s == u for s, _ in self._relayed):
            raise SecAggError(
                f"masked input from client {u}, which already sent one or never shared its "
                "keys; it cannot be unmasked and is refused"
            )
        vector = np.asarray(masked.vector, dtype=np.uint64)
        if self._total is not None and vector.shape != self._total.shape:
            raise SecAggError(
                f"client {u} sent a masked vector of shape {vector.shape}, expected "
                f"{self._total.shape}: every client must mask the same model"
            )
        bits = self.config.modulus_bits
        self._total = vector.copy() if self._total is None else add_mod(self._total, vector, bits)
        self._masked.add(u)

    def unmask_request(self) -> UnmaskRequest:
        """Step 3 -> 4: who survived (remove ``b_u``) and who dropped (remove ``s_uv``)."""
        needed = self.config.min_survivors(self._n)
        if len(self._masked) < needed:
            raise SecAggError(
                f"only {len(self._masked)} of {self._n} clients sent masked inputs, fewer than "
                f"the {needed} that max_dropout_fraction={self.config.max_dropout_fraction} "
                "allows; the round is aborted and nothing is unmasked.\n"
                "Hint: raise max_dropout_fraction (and lower threshold_fraction), or give "
                "clients more time"
            )
        shared = {s for s, _ in self._relayed}
        return UnmaskRequest(frozenset(self._masked), frozenset(shared - self._masked))

    def finish(self, request: UnmaskRequest, reveals: Iterable[ShareReveal]) -> AggregateSum:
        """Step 4: rebuild the seeds from ``t`` shares each and strip every mask."""
        if self._total is None:
            raise SecAggError("no masked input arrived; there is nothing to unmask")
        seed_shares: dict[int, list[Share]] = {}
        key_shares: dict[int, list[Share]] = {}
        for reveal in reveals:
            if reveal.client not in request.survivors:
                continue
            for u, share in reveal.seed_shares.items():
                seed_shares.setdefault(u, []).append(share)
            for u, share in reveal.key_shares.items():
                key_shares.setdefault(u, []).append(share)
        total = self._total
        for u in sorted(request.survivors):
            total = self._remove_self_mask(total, u, seed_shares.get(u, []))
        for u in sorted(request.dropped):
            total = self._remove_pair_masks(total, u, key_shares.get(u, []), request.survivors)
        levels = levels_for(self.config.modulus_bits, self._n)
        count = len(request.survivors)
        values = dequantize_sum(total, self.config.clipping_range, levels, count)
        return AggregateSum(total, values, count, request.survivors)

    def _rebuild(self, u: int, shares: list[Share], what: str) -> bytes:
        if len(shares) < self._threshold:
            raise SecAggError(
                f"cannot remove client {u}'s {what}: {len(shares)} of its "
                f"{len(self._graph[u])} neighbours revealed shares, the threshold is "
                f"{self._threshold}. Too many of client {u}'s neighbours dropped out.\n"
                "Hint: a larger SecAggConfig.neighbours, or fewer dropouts per round"
            )
        return combine_secret(shares[: self._threshold])

    def _remove_self_mask(self, total: FieldVector, u: int, shares: list[Share]) -> FieldVector:
        seed = self._rebuild(u, shares, "self mask")
        bits = self.config.modulus_bits
        return sub_mod(total, expand_mask(seed, total.size, bits), bits)

    def _remove_pair_masks(
        self, total: FieldVector, u: int, shares: list[Share], survivors: frozenset[int]
    ) -> FieldVector:
        private = x25519.X25519PrivateKey.from_private_bytes(self._rebuild(u, shares, "mask key"))
        if public_bytes(private) != self._adverts[u].mask_key:
            raise SecAggError(
                f"the mask key rebuilt for dropped client {u} does not match the key it "
                "advertised: some neighbour revealed a wrong share; the round is aborted"
            )
        bits = self.config.modulus_bits
        for v in sorted(survivors):
            if (u, v) not in self._relayed:
                continue  # v never held u's share, so v did not mask with u
            pair = expand_mask(
                mask_seed(private, self._adverts[v].mask_key, self._round_seed, u, v),
                total.size,
                bits,
            )
            # v added g_vu * PRG(s_vu) with g_vu = +1 when v < u; take it back out.
            total = sub_mod(total, pair, bits) if v < u else add_mod(total, pair, bits)
        return total
