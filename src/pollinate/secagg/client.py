"""The client side of SecAgg+: a state machine through the four steps of a round.

Bell et al. 2020, "Secure Single-Server Aggregation with (Poly)Logarithmic Overhead", Alg. 2
(after Bonawitz et al. 2017, Fig. 4), with the neighbour graph ``G`` drawn from a public seed.
Client ``u`` with neighbours ``N(u)`` sends

    y_u = x_u + PRG(b_u) + sum_{v in N(u)} g_uv * PRG(s_uv)   mod R,   g_uv = +1 if u < v else -1

where ``b_u`` is a fresh self-mask seed and ``s_uv`` the seed agreed with ``v`` by X25519. It
Shamir-shares ``b_u`` and its mask key ``s_u`` among ``N(u)`` with threshold ``t``.

Invariants (each has a test): the client checks the node signature on every neighbour's keys
before using them, and aborts naming the client whose keys fail; for any one neighbour it reveals
a share of ``b_v`` or of ``s_v``, never both, and only once.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric import x25519

from pollinate.secagg.config import SecAggConfig
from pollinate.secagg.crypto import (
    NodeSigningKey,
    NodeVerifyingKey,
    agree,
    open_share,
    pack_ids,
    private_bytes,
    public_bytes,
    seal_share,
    sign,
    split_secret,
    verify,
)
from pollinate.secagg.field import (
    SEED_BYTES,
    add_mod,
    expand_mask,
    levels_for,
    quantize,
    sub_mod,
)
from pollinate.secagg.graph import neighbour_graph
from pollinate.secagg.messages import (
    EncryptedShare,
    KeyAdvert,
    KeySubstituted,
    MaskedInput,
    SecAggError,
    Share,
    ShareReveal,
    UnmaskRequest,
)

__all__ = ["SecAggClient", "advert_payload", "mask_seed"]


class _Step(enum.Enum):
    ADVERTISE = 1
    SHARE = 2
    MASK = 3
    UNMASK = 4
    DONE = 5


def advert_payload(round_seed: bytes, advert: KeyAdvert) -> bytes:
    """What the node key signs: the round, the client id and both public keys."""
    header = b"pollinate-secagg-v1/advert" + round_seed + pack_ids(advert.client)
    return header + advert.cipher_key + advert.mask_key


def mask_seed(
    private: x25519.X25519PrivateKey, public: bytes, round_seed: bytes, u: int, v: int
) -> bytes:
    """``s_uv``: the pairwise mask seed of ``u`` and ``v``, the same from either end."""
    label = b"pollinate-secagg-v1/mask" + round_seed + pack_ids(min(u, v), max(u, v))
    return agree(private, public, label)


class SecAggClient:
    """One client's part in one round; make a new one for every round.

    ``peer_keys`` are the participants' node identity keys, known from the fleet's
    certificates and not from the server's relay.
    """

    def __init__(
        self,
        client: int,
        node_key: NodeSigningKey,
        peer_keys: Mapping[int, NodeVerifyingKey],
        participants: Sequence[int],
        round_seed: bytes,
        config: SecAggConfig,
    ) -> None:
        if client not in participants:
            raise ValueError(
                f"client {client} is not among the participants {sorted(participants)}"
            )
        self.client = client
        self.config = config
        self._node_key = node_key
        self._peer_keys = dict(peer_keys)
        self._round_seed = round_seed
        self._n = len(set(participants))
        k = config.neighbour_count(self._n)
        self._neighbours = neighbour_graph(participants, k, round_seed)[client]
        self._threshold = config.threshold(self._n)
        self._cipher = x25519.X25519PrivateKey.generate()
        self._mask = x25519.X25519PrivateKey.generate()
        self._self_seed = os.urandom(SEED_BYTES)
        self._adverts: dict[int, KeyAdvert] = {}
        self._held: dict[int, tuple[Share, Share]] = {}  # neighbour -> (b share, s share)
        self._step = _Step.ADVERTISE

    @property
    def neighbours(self) -> tuple[int, ...]:
        return self._neighbours

    def advertise_keys(self) -> KeyAdvert:
        """Step 1: two fresh X25519 public keys, signed with the node key."""
        self._advance(_Step.ADVERTISE)
        unsigned = KeyAdvert(self.client, public_bytes(self._cipher), public_bytes(self._mask), b"")
        signature = sign(self._node_key, advert_payload(self._round_seed, unsigned))
        return KeyAdvert(unsigned.client, unsigned.cipher_key, unsigned.mask_key, signature)

    def share_keys(
        self,
        adverts: Mapping[int, KeyAdvert],
        peer_keys: Mapping[int, NodeVerifyingKey] | None = None,
    ) -> list[EncryptedShare]:
        """Step 2: check the neighbours' keys, then send each a share of ``b_u`` and ``s_u``.

        ``peer_keys`` adds node identity keys learnt with the adverts (from credentials the
        caller verified, such as node certificates)."""
        self._advance(_Step.SHARE)
        self._peer_keys.update(peer_keys or {})
        for v in self._neighbours:
            if v in adverts:
                self._adverts[v] = self._checked(v, adverts[v])
        self._need_neighbours(len(self._adverts), "advertised keys")
        recipients = sorted(self._adverts)
        seed_shares = split_secret(self._self_seed, self._threshold, len(recipients))
        key_shares = split_secret(private_bytes(self._mask), self._threshold, len(recipients))
        return [
            self._seal(v, b, s) for v, b, s in zip(recipients, seed_shares, key_shares, strict=True)
        ]

    def masked_input(self, values: npt.ArrayLike, shares: Sequence[EncryptedShare]) -> MaskedInput:
        """Step 3: keep the neighbours' shares and send ``y_u`` (module docstring)."""
        self._advance(_Step.MASK)
        for share in shares:
            self._keep(share)
        self._need_neighbours(len(self._held), "shared their keys")
        levels = levels_for(self.config.modulus_bits, self._n)
        x = quantize(np.ravel(values), self.config.clipping_range, levels)
        bits = self.config.modulus_bits
        y = add_mod(x, expand_mask(self._self_seed, x.size, bits), bits)
        for v in sorted(self._held):  # mask only with neighbours that can be unmasked
            pair = expand_mask(self._pair_seed(v), x.size, bits)
            y = add_mod(y, pair, bits) if self.client < v else sub_mod(y, pair, bits)
        return MaskedInput(self.client, y)

    def unmask(self, request: UnmaskRequest) -> ShareReveal:
        """Step 4: shares of ``b_v`` for surviving neighbours, of ``s_v`` for dropped ones."""
        self._advance(_Step.UNMASK)
        if request.survivors & request.dropped:
            both = sorted(request.survivors & request.dropped)
            raise SecAggError(
                f"client {self.client}: the server asked to unmask clients {both} as both "
                "survivors and dropped, which would reveal their updates; round aborted"
            )
        if self.client not in request.survivors:
            raise SecAggError(f"client {self.client} is asked to unmask but is not a survivor")
        if len(request.survivors) < self.config.min_survivors(self._n):
            raise SecAggError(
                f"client {self.client}: only {len(request.survivors)} of {self._n} clients "
                "survived, below the configured minimum; a sum over so few would say too much "
                "about each, so this client reveals nothing"
            )
        self._step = _Step.DONE
        held = self._held
        seeds = {v: held[v][0] for v in request.survivors if v in held}
        keys = {v: held[v][1] for v in request.dropped if v in held}
        return ShareReveal(self.client, seeds, keys)

    def _advance(self, step: _Step) -> None:
        if self._step is not step:
            raise SecAggError(
                f"client {self.client} was asked for step {step.name.lower()} while at step "
                f"{self._step.name.lower()}: each step runs once, in order.\n"
                "Hint: advertise_keys -> share_keys -> masked_input -> unmask, one client per round"
            )
        self._step = _Step(step.value + 1)

    def _checked(self, v: int, advert: KeyAdvert) -> KeyAdvert:
        key = self._peer_keys.get(v)
        if (
            advert.client != v
            or key is None
            or not verify(key, advert.signature, advert_payload(self._round_seed, advert))
        ):
            raise KeySubstituted(
                f"client {self.client}: the public keys relayed for client {v} are not signed "
                f"by client {v}'s node key. The server, or someone between, substituted them; "
                "the round is aborted before any secret is shared.\n"
                f"Hint: check the hub's integrity and client {v}'s node certificate"
            )
        return advert

    def _need_neighbours(self, have: int, what: str) -> None:
        if have < self._threshold:
            raise SecAggError(
                f"client {self.client}: only {have} of its {len(self._neighbours)} neighbours "
                f"{what}, fewer than the threshold {self._threshold}; its secrets could not be "
                "recovered, so the round is aborted.\n"
                "Hint: more clients per round, or a larger SecAggConfig.neighbours"
            )

    def _cipher_key(self, v: int) -> bytes:
        label = (
            b"pollinate-secagg-v1/cipher" + self._round_seed + pack_ids(*sorted((self.client, v)))
        )
        return agree(self._cipher, self._adverts[v].cipher_key, label)

    def _pair_seed(self, v: int) -> bytes:
        return mask_seed(self._mask, self._adverts[v].mask_key, self._round_seed, self.client, v)

    def _associated(self, sender: int, recipient: int) -> bytes:
        return b"pollinate-secagg-v1/share" + self._round_seed + pack_ids(sender, recipient)

    def _seal(self, v: int, seed_share: Share, key_share: Share) -> EncryptedShare:
        plain = pack_ids(seed_share[0], key_share[0]) + seed_share[1] + key_share[1]
        nonce, sealed = seal_share(self._cipher_key(v), self._associated(self.client, v), plain)
        return EncryptedShare(self.client, v, nonce, sealed)

    def _keep(self, share: EncryptedShare) -> None:
        u = share.sender
        if share.recipient != self.client or u not in self._adverts or u in self._held:
            return  # not for us, from a non-neighbour, or a replay: ignore, never reveal twice
        plain = open_share(
            self._cipher_key(u), self._associated(u, self.client), share.nonce, share.ciphertext
        )
        if plain is None or len(plain) != 16 + 2 * SEED_BYTES:
            raise SecAggError(
                f"client {self.client}: the share from client {u} fails authentication; "
                "it was altered in transit, and the round is aborted"
            )
        xb, xs = int.from_bytes(plain[:8]), int.from_bytes(plain[8:16])
        self._held[u] = ((xb, plain[16:48]), (xs, plain[48:]))
