"""Federated evaluation: sampled nodes evaluate the new global model on their own data.

Invariant: no reply counts for more than its bounded share: its claimed example count is
bounded as a fit update's is (``bounds.bound_examples``), and a reply with a non-finite
loss or metric is a failure (``screen.evaluate_problem``).
"""

from __future__ import annotations

from pollinate.loop.bounds import bound_examples
from pollinate.loop.events import Stage
from pollinate.loop.history import FailureKind
from pollinate.loop.recorder import RoundRecorder
from pollinate.loop.screen import evaluate_problem
from pollinate.loop.stages import Stages
from pollinate.records import Arrays, Message
from pollinate.strategy.base import Strategy


def evaluate(stages: Stages, strategy: Strategy, rounds: RoundRecorder, arrays: Arrays) -> None:
    """Evaluate ``arrays`` on the nodes the strategy samples; the result goes to the record."""
    nodes = stages.sample(rounds, Stage.EVALUATE, strategy.sample_evaluate, 1)
    if not nodes:
        return
    config = strategy.configure_evaluate(rounds.number)
    replies: list[Message] = []
    tasks = dict.fromkeys(nodes, (arrays, config))
    for node, reply, problem in stages.collect(rounds, Stage.EVALUATE, tasks):
        if problem is None and (invalid := evaluate_problem(reply)) is not None:
            problem = FailureKind.INVALID, invalid
        rounds.received(Stage.EVALUATE, node, problem is None)
        if problem is not None:
            rounds.fail(node, Stage.EVALUATE, *problem)
            continue
        replies.append(reply)
    validation = stages.app.validation
    claims = [reply.num_examples for reply in replies]
    counts = bound_examples(claims, validation.examples_multiple, validation.max_examples)
    for reply, claim, count in zip(replies, claims, counts, strict=True):
        if count != claim:
            note = f"claimed {claim} examples, counted {count} (Validation's bounds)"
            rounds.bound(reply.node_id, Stage.EVALUATE, note)
    total = sum(counts)
    if total > 0:
        losses = [n * float(r.loss or 0.0) for n, r in zip(counts, replies, strict=True)]
        metrics = [(n, r.metrics) for n, r in zip(counts, replies, strict=True)]
        rounds.record.evaluate = {
            "loss": sum(losses) / total,
            **strategy.aggregate_evaluate_metrics(metrics),
        }
