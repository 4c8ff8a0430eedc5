"""A round's fit as SecAgg+ over the Grid: the hub learns the weighted mean change, no update.

``ServerApp(secure_aggregation=SecAggConfig(...))`` turns it on; the loop then runs the four
stages of ``pollinate.secagg.codec`` as four dispatches to the round's sampled nodes:

1. advertise: every node makes fresh keys and signs them with its identity key;
2. share: each node gets its neighbours' keys, checks their signatures, and sends Shamir shares
   of its secrets, encrypted for each neighbour;
3. mask: each node gets the shares sent to it and the global model, trains (the app's own fit),
   and sends its weighted change to the model, masked;
4. unmask: the survivors reveal what removes the masks, and the hub reads the exact sum.

A node that fails or times out in a stage drops out of the round, as in a plain round. A node
that reports substituted keys (``KeySubstituted``) aborts the round: the hub, or someone
between, tampered with the key exchange, and the round keeps the previous model.

The hub cannot screen single updates here (it never sees one): validation applies to the
mean only, and each client's fit metrics still travel in the clear.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from pollinate.loop.evaluate import evaluate
from pollinate.loop.events import Stage
from pollinate.loop.history import FailureKind
from pollinate.loop.plain import finish_fit
from pollinate.loop.recorder import RoundRecorder
from pollinate.loop.stages import Outcome, Problem, Stages, Tasks
from pollinate.loop.validate import arrays_problem
from pollinate.records import Arrays, Config, Message, MessageKind, Metrics
from pollinate.secagg import codec
from pollinate.secagg.config import SecAggConfig
from pollinate.secagg.messages import (
    AggregateSum,
    EncryptedShare,
    KeyAdvert,
    MaskedInput,
    SecAggError,
    ShareReveal,
)
from pollinate.secagg.server import SecAggServer
from pollinate.secagg.update import mean_model, vector_length
from pollinate.strategy.base import FitResult, Strategy

Collect = Callable[[Stage, Tasks], Iterator[Outcome]]
"""``(stage, {node: (arrays, config)}) -> (node, reply, problem)`` once per task."""


class SecureRounds:
    """Synchronous rounds whose fit is SecAgg+: the strategy gets the round's mean as one
    result, with ``count`` the clients in it; federated evaluation is in the clear."""

    def __init__(self, stages: Stages, strategy: Strategy, config: SecAggConfig) -> None:
        self.stages, self.strategy, self.config = stages, strategy, config

    def fit(self, rounds: RoundRecorder, arrays: Arrays) -> Arrays:
        strategy, rnd = self.strategy, rounds.number
        nodes = self.stages.sample(rounds, Stage.FIT, strategy.sample_fit, 0)
        config = strategy.configure_fit(rnd)
        aggregator = strategy.start_fit(rnd, arrays)

        def collect(stage: Stage, tasks: Tasks) -> Iterator[Outcome]:
            return self.stages.collect(rounds, stage, tasks, MessageKind.SECAGG)

        outcome = SecureFit(self.config, self.stages.run_id, collect).run(
            rnd, nodes, arrays, config
        )
        for node, (kind, reason) in outcome.failures:
            rounds.fail(node, Stage.FIT, kind, reason)
        rounds.count_fit(0)
        rounds.record.fit = strategy.aggregate_fit_metrics(outcome.metrics)
        if outcome.arrays is None:
            rounds.abort(outcome.aborted or "secure aggregation gave up")
            return arrays
        problem = arrays_problem(outcome.arrays, arrays)
        if problem is not None:
            rounds.abort(f"the securely summed mean {problem}")
            return arrays
        rounds.record.replies = outcome.clients
        aggregator.add(FitResult(0, outcome.arrays, outcome.examples, {}, outcome.clients))
        return finish_fit(rounds, strategy, arrays, aggregator, len(nodes))

    def evaluate(self, rounds: RoundRecorder, arrays: Arrays) -> None:
        evaluate(self.stages, self.strategy, rounds, arrays)

    def close(self) -> None:
        pass


@dataclass
class SecureOutcome:
    """What a secure round leaves: the mean model (None if aborted), failures, metrics."""

    arrays: Arrays | None = None
    examples: int = 0
    clients: int = 0
    failures: list[tuple[int, Problem]] = field(default_factory=list)
    metrics: list[tuple[int, Metrics]] = field(default_factory=list)
    aborted: str | None = None


class SecureFit:
    """Runs rounds' fits as SecAgg+ through ``collect`` (the loop's dispatch)."""

    def __init__(self, config: SecAggConfig, run_id: str, collect: Collect) -> None:
        self.config = config
        self.run_id = run_id
        self.collect = collect

    def run(
        self, rnd: int, nodes: Sequence[int], current: Arrays, fit_config: Config
    ) -> SecureOutcome:
        out = SecureOutcome()
        try:
            out.arrays = self._protocol(rnd, sorted(nodes), current, fit_config, out)
        except SecAggError as exc:
            out.aborted = str(exc)
        return out

    def _protocol(
        self, rnd: int, nodes: list[int], current: Arrays, fit_config: Config, out: SecureOutcome
    ) -> Arrays:
        if len(nodes) < 3:
            raise SecAggError(
                f"secure aggregation needs at least 3 clients in a round, and {len(nodes)} "
                "were sampled: with 2, each could read the other's update off the sum.\n"
                "Hint: Sampling(min_fit_clients=3) (or more) on the strategy, and at least 3 "
                "clients"
            )
        server = SecAggServer(nodes, codec.round_seed(self.run_id, rnd, nodes), self.config)
        adverts = self._advertise(nodes, server, out)
        inbox = self._share(adverts, server, out)
        self._mask(inbox, server, current, fit_config, out)
        total = self._unmask(server, out)
        out.clients = total.count
        return mean_model(total.values, current)

    def _advertise(
        self, nodes: list[int], server: SecAggServer, out: SecureOutcome
    ) -> dict[int, dict[int, np.ndarray]]:
        """Stage 1; returns, per node, its neighbours' encoded adverts to relay."""
        everyone = {codec.PREFIX + "participants": codec.ids(nodes)}
        adverts: dict[int, tuple[KeyAdvert, bytes]] = {}
        for node, protocol in self._stage("advertise", dict.fromkeys(nodes, everyone), out):
            with self._failing(node, "advertise", out):
                advert, credential = codec.decode_advert(_need(protocol, "advert", node))
                if advert.client == node:  # a node speaks only for itself
                    adverts[node] = (advert, credential)
        relay = server.relay_adverts(advert for advert, _ in adverts.values())
        return {
            u: {v: codec.encode_advert(advert, adverts[v][1]) for v, advert in neighbours.items()}
            for u, neighbours in relay.items()
        }

    def _share(
        self, adverts: dict[int, dict[int, np.ndarray]], server: SecAggServer, out: SecureOutcome
    ) -> dict[int, list[EncryptedShare]]:
        """Stage 2; returns each node's inbox of encrypted shares (empty lists included)."""
        tasks = {
            u: {f"{codec.PREFIX}advert/{v}": a for v, a in ads.items()}
            for u, ads in adverts.items()
        }
        shares: list[EncryptedShare] = []
        for node, protocol in self._stage("share", tasks, out):
            with self._failing(node, "share", out):
                shares += _shares(node, protocol)
        inbox = server.relay_shares(shares)
        return {u: inbox.get(u, []) for u in sorted({s.sender for s in shares})}

    def _mask(
        self,
        inbox: dict[int, list[EncryptedShare]],
        server: SecAggServer,
        current: Arrays,
        fit_config: Config,
        out: SecureOutcome,
    ) -> None:
        """Stage 3: every node that shared its keys trains and sends its masked change."""
        tasks = {
            u: {
                **current,
                **{f"{codec.PREFIX}share/{s.sender}": codec.encode_share(s) for s in shares},
            }
            for u, shares in inbox.items()
        }
        length = vector_length(current)
        for node, reply in self._replies("mask", tasks, out, fit_config):
            with self._failing(node, "mask", out):
                vector = codec.decode_masked(
                    _need(codec.split(reply.arrays)[1], "masked", node), length
                )
                server.receive_masked(MaskedInput(node, vector))
                out.metrics.append((reply.num_examples, reply.metrics))
                out.examples += reply.num_examples

    def _unmask(self, server: SecAggServer, out: SecureOutcome) -> AggregateSum:
        """Stage 4: the survivors reveal what removes the masks; the exact sum."""
        request = server.unmask_request()
        lists = {
            codec.PREFIX + "survivors": codec.ids(request.survivors),
            codec.PREFIX + "dropped": codec.ids(request.dropped),
        }
        reveals = []
        for node, protocol in self._stage("unmask", dict.fromkeys(request.survivors, lists), out):
            with self._failing(node, "unmask", out):
                reveals.append(_reveal(node, protocol))
        return server.finish(request, reveals)

    @staticmethod
    @contextmanager
    def _failing(node: int, stage: str, out: SecureOutcome) -> Iterator[None]:
        """A node's malformed or refused part is that node's failure, not the round's."""
        try:
            yield
        except SecAggError as exc:
            reason = f"secure aggregation ({stage}): {exc}"
            out.failures.append((node, (FailureKind.INVALID, reason)))

    def _stage(
        self, stage: str, tasks: Mapping[int, Mapping[str, np.ndarray]], out: SecureOutcome
    ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        for node, reply in self._replies(stage, tasks, out):
            yield node, codec.split(reply.arrays)[1]

    def _replies(
        self,
        stage: str,
        tasks: Mapping[int, Mapping[str, np.ndarray]],
        out: SecureOutcome,
        extra: Config | None = None,
    ) -> Iterator[tuple[int, Message]]:
        """Each node's good reply to ``stage``; failures are noted, substituted keys abort."""
        config = {**(extra or {}), **codec.config_items(self.config), codec.STAGE_KEY: stage}
        instructions = {u: (Arrays(dict(arrays)), config) for u, arrays in tasks.items()}
        for node, reply, problem in self.collect(Stage(f"secagg-{stage}"), instructions):
            if problem is not None and reply.error is not None and not reply.lost:
                if reply.error.startswith("KeySubstituted"):
                    raise SecAggError(f"node {node} reports: {reply.error}")
                problem = FailureKind.CLIENT, f"secure aggregation ({stage}): {reply.error}"
            if problem is not None:
                out.failures.append((node, problem))
                continue
            yield node, reply


def _need(protocol: dict[str, np.ndarray], name: str, node: int) -> np.ndarray:
    array = protocol.get(name)
    if array is None:
        raise SecAggError(f"node {node}'s reply lacks {codec.PREFIX}{name}")
    return array


def _shares(node: int, protocol: dict[str, np.ndarray]) -> list[EncryptedShare]:
    shares = [codec.decode_share(a) for a in codec.keyed(protocol, "share").values()]
    return [s for s in shares if s.sender == node]  # a node speaks only for itself


def _reveal(node: int, protocol: dict[str, np.ndarray]) -> ShareReveal:
    seeds = {v: codec.decode_reveal(a) for v, a in codec.keyed(protocol, "seed").items()}
    keys = {v: codec.decode_reveal(a) for v, a in codec.keyed(protocol, "key").items()}
    return ShareReveal(node, seeds, keys)
