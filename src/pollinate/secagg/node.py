"""A node's side of secure aggregation: the four stages of a round, as tasks it answers.

Both engines keep one ``SecAggNode`` per node (the simulation one per virtual client) and
hand it every ``secagg`` instruction with a way to run the app's own fit. The round's secrets
(X25519 keys, the self-mask seed, the shares held for neighbours) live only in this object's
memory, never on disk, and are dropped when the node has revealed its shares (the round is
over for it); what is left of a round goes when a later round of the run begins.

Invariants:
- a stage asked again (a resent task, a hub that restarted) gets the same answer, never a
  second set of keys or a second masked input (two masked inputs under the same masks would
  give away the difference of two updates);
- the node signs its keys with its own identity key and checks each neighbour's signature
  against that neighbour's credential, verified by ``NodeIdentity.peer_key`` (in deployment:
  the node certificate, checked against the fleet's CA), never against anything the hub vouches
  for; any failure aborts the round with a ``SecAggError`` in the reply.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pollinate.client.client import Context
from pollinate.client.handlers import AppAnswer, Handlers
from pollinate.records import Arrays, Message, MessageKind
from pollinate.secagg import codec
from pollinate.secagg.client import SecAggClient
from pollinate.secagg.crypto import NodeSigningKey, NodeVerifyingKey
from pollinate.secagg.messages import KeySubstituted, SecAggError, UnmaskRequest
from pollinate.secagg.update import client_weight, flatten

Fit = Callable[[Message], Message]
"""Runs the app's fit on a plain ``fit`` instruction and returns its reply."""

PeerKey = Callable[[int, bytes], NodeVerifyingKey]
"""``(node id, credential) -> that node's verifying key``, or ``SecAggError`` if not its own."""


@dataclass(frozen=True)
class NodeIdentity:
    """How a node signs its SecAgg keys and checks its peers' signatures.

    ``credential`` travels with the node's keys (its certificate in deployment); ``peer_key``
    turns a peer's credential into that peer's verifying key, or refuses it.
    """

    signing_key: NodeSigningKey
    credential: bytes
    peer_key: PeerKey


class _Session:
    def __init__(self, client: SecAggClient) -> None:
        self.client: SecAggClient | None = client  # None once the round is over here
        self.replies: dict[str, Message] = {}


class SecAggNode:
    """Answers one node's ``secagg`` tasks; safe to call from several threads."""

    def __init__(
        self,
        node_id: int,
        identity: NodeIdentity,
        max_sessions: int = 4,
        keep_masked: bool = True,
    ) -> None:
        self.node_id = node_id
        self.identity = identity
        self.max_sessions = max_sessions
        # A deployed node keeps its masked reply until the round ends, to send the same one
        # if the task comes again; the simulation never asks twice, and keeps no copies of
        # thousands of clients' model-sized vectors.
        self.keep_masked = keep_masked
        self._sessions: OrderedDict[tuple[str, int], _Session] = OrderedDict()
        self._lock = threading.Lock()

    def handle(self, instruction: Message, fit: Fit) -> Message:
        """The reply to a ``secagg`` instruction; a protocol failure is the reply's error."""
        stage = str(instruction.config.get(codec.STAGE_KEY, ""))
        key = (instruction.run_id, instruction.round)
        try:
            session = self._session(key, stage, instruction)
            done = session.replies.get(stage)
            if done is not None:
                return done  # the same task again: the same answer
            reply = self._step(session, stage, instruction, fit)
        except SecAggError as exc:  # KeySubstituted keeps its name: the hub aborts the round
            return instruction.reply(error=f"{type(exc).__name__}: {exc}")
        if stage == "mask" and not self.keep_masked:
            session.replies[stage] = instruction.reply(
                error=f"SecAggError: node {self.node_id} already sent its masked input for "
                "this round, and sends one only once"
            )
        else:
            session.replies[stage] = reply
        if stage == "unmask":  # the round is over here: its secrets and big reply can go
            session.client = None
            session.replies.pop("mask", None)
        return reply

    def adopt(self, other: SecAggNode) -> None:
        """Take over ``other``'s rounds under way (the node renewed its certificate: the keys
        it signed with the old one stay valid for the rounds they were made for)."""
        with other._lock:
            self._sessions.update(other._sessions)

    # --- sessions ------------------------------------------------------------------------

    def _session(self, key: tuple[str, int], stage: str, instruction: Message) -> _Session:
        if stage not in codec.STAGES:
            raise SecAggError(f"unknown secure-aggregation stage {stage!r}")
        with self._lock:
            session = self._sessions.get(key)
            if session is None and stage == "advertise":
                session = self._sessions[key] = _Session(self._new_client(instruction))
                self._drop_old(key)
        if session is None:
            raise SecAggError(
                f"node {self.node_id} holds no keys for round {instruction.round} (it restarted "
                "or never got the advertise stage), so it drops out of this round"
            )
        return session

    def _new_client(self, instruction: Message) -> SecAggClient:
        config = codec.config_from(instruction.config)
        _, protocol = codec.split(instruction.arrays)
        participants = sorted(codec.id_set(protocol.get("participants"), "participants"))
        seed = codec.round_seed(instruction.run_id, instruction.round, participants)
        return SecAggClient(self.node_id, self.identity.signing_key, {}, participants, seed, config)

    def _drop_old(self, key: tuple[str, int]) -> None:
        """A new round of a run ends that run's earlier ones; keep a bounded number in all."""
        for old in [k for k in self._sessions if k[0] == key[0] and k[1] < key[1]]:
            del self._sessions[old]
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)

    # --- the four stages -----------------------------------------------------------------

    def _step(self, session: _Session, stage: str, instruction: Message, fit: Fit) -> Message:
        client = session.client
        if client is None:
            raise SecAggError(
                f"node {self.node_id} finished round {instruction.round} and holds its keys no "
                f"longer; it cannot answer a {stage} stage for it"
            )
        model, protocol = codec.split(instruction.arrays)
        if stage == "advertise":
            advert = codec.encode_advert(client.advertise_keys(), self.identity.credential)
            return instruction.reply(arrays={codec.PREFIX + "advert": advert})
        if stage == "share":
            return instruction.reply(arrays=self._share(client, protocol))
        if stage == "mask":
            return self._mask(client, instruction, model, protocol, fit)
        request = UnmaskRequest(
            codec.id_set(protocol.get("survivors"), "survivors"),
            codec.id_set(protocol.get("dropped"), "dropped"),
        )
        reveal = client.unmask(request)
        arrays = {
            f"{codec.PREFIX}seed/{v}": codec.encode_reveal(s) for v, s in reveal.seed_shares.items()
        }
        arrays |= {
            f"{codec.PREFIX}key/{v}": codec.encode_reveal(s) for v, s in reveal.key_shares.items()
        }
        return instruction.reply(arrays=arrays)

    def _share(
        self, client: SecAggClient, protocol: dict[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        adverts, keys = {}, {}
        for v, array in codec.keyed(protocol, "advert").items():
            advert, credential = codec.decode_advert(array)
            if advert.client != v:
                raise KeySubstituted(
                    f"the keys relayed as client {v}'s name client {advert.client}"
                )
            keys[v] = self._peer_key(v, credential)
            adverts[v] = advert
        shares = client.share_keys(adverts, peer_keys=keys)
        return {f"{codec.PREFIX}share/{s.recipient}": codec.encode_share(s) for s in shares}

    def _peer_key(self, v: int, credential: bytes) -> NodeVerifyingKey:
        try:
            return self.identity.peer_key(v, credential)
        except Exception as exc:  # a credential that fails verification, in whatever way
            raise KeySubstituted(
                f"client {self.node_id}: the credential relayed for client {v} is not client "
                f"{v}'s ({exc}). The server, or someone between, substituted it; the round is "
                "aborted before any secret is shared."
            ) from None

    def _mask(
        self,
        client: SecAggClient,
        instruction: Message,
        model: Arrays,
        protocol: dict[str, np.ndarray],
        fit: Fit,
    ) -> Message:
        shares = [codec.decode_share(a) for a in codec.keyed(protocol, "share").values()]
        config = {k: v for k, v in instruction.config.items() if not k.startswith("secagg.")}
        trained = fit(
            Message(
                MessageKind.FIT,
                task_id=instruction.task_id,
                run_id=instruction.run_id,
                round=instruction.round,
                node_id=instruction.node_id,
                arrays=model.copy(),  # the client may train its own in place: ``model`` stays
                config=config,
            )
        )
        if trained.error is not None:
            return instruction.reply(error=trained.error)
        problem = _shape_problem(trained.arrays, model)
        if problem is not None:
            return instruction.reply(error=problem)
        weight = client_weight(trained.num_examples, client.config.max_weight)
        values = flatten(trained.arrays, model, weight)
        if not np.isfinite(values).all():
            return instruction.reply(
                error="fit returned non-finite values (NaN/inf): its training diverged; "
                "lower the learning rate or clip gradients"
            )
        masked = client.masked_input(values, shares)
        clipped = int(np.count_nonzero(np.abs(values) > client.config.clipping_range))
        metrics = {**trained.metrics, "secagg_clipped": clipped}
        vector = codec.encode_masked(masked.vector, client.config.modulus_bits)
        return instruction.reply(
            arrays={codec.PREFIX + "masked": vector},
            num_examples=trained.num_examples,
            metrics=metrics,
        )


def _shape_problem(new: Arrays, model: Arrays) -> str | None:
    for name, base in model.items():
        if name not in new or np.shape(new[name]) != base.shape:
            return (
                f"fit returned no array {name!r} of shape {list(base.shape)}: secure "
                "aggregation sums changes to the global model, so fit must return arrays "
                "shaped like it"
            )
    return None


def handlers(app: AppAnswer, node_for: Callable[[Context], SecAggNode]) -> Handlers:
    """A node's handler table with secure aggregation's stages: ``node_for`` gives the node's
    ``SecAggNode``, or raises SecAggError when the node has no identity to sign keys with."""

    def stage(instruction: Message, context: Context, answer: AppAnswer) -> Message:
        try:
            node = node_for(context)
        except SecAggError as exc:
            return instruction.reply(error=f"SecAggError: {exc}")
        return node.handle(instruction, lambda fit: answer(context, fit))

    return Handlers(app, {MessageKind.SECAGG: stage})
