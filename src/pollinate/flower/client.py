"""Flower's ``ClientApp``, both generations, as a pollinate ``client_fn``.

A ``ClientApp`` is callable as ``client_fn(context)``, so ``[tool.flwr.app.components]
clientapp = "pkg.client_app:app"`` (or ``[tool.pollinate] client``) names it directly:

- ``ClientApp(client_fn=client_fn)`` (Flower 1.x): ``client_fn(context)`` returns a
  ``NumPyClient`` (or its ``.to_client()``), which pollinate drives as it is.
- ``ClientApp()`` with ``@app.train()`` / ``@app.evaluate()`` (the Message API): each
  task becomes a ``Message`` whose content holds ``"arrays"`` (``ArrayRecord``) and
  ``"config"`` (``ConfigRecord``); the reply's ``ArrayRecord`` is the update, its
  ``MetricRecord``'s ``"num-examples"`` its weight (as in Flower), the other metrics its
  metrics. An evaluate reply's loss is its first metric whose name ends in "loss".

``Context`` is pollinate's: ``node_config["partition-id"]`` / ``["num-partitions"]`` and
``run_config`` are there as Flower sets them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pollinate.client.client import Client, Context
from pollinate.errors import ClientError
from pollinate.flower.records import (
    ArrayRecord,
    ConfigRecord,
    Message,
    Metadata,
    MetricRecord,
    RecordDict,
    metric_values,
)
from pollinate.records import Arrays, Config, Metrics

MessageFn = Callable[[Message, Context], Message]

WEIGHT_KEY = "num-examples"
"""The metric a Message-API reply carries its number of examples in (Flower's default
``weighted_by_key``)."""

ROUND_KEY = "server-round"
"""The config key Flower's strategies put the round in; the compat strategies do too."""


class ClientApp:
    """Flower's ``ClientApp``: ``ClientApp(client_fn=...)``, or ``ClientApp()`` with
    ``@app.train()`` and ``@app.evaluate()``. Calling it with a Context gives the client.

    >>> app = ClientApp()
    >>> @app.train()
    ... def train(msg, context):
    ...     return Message(RecordDict({"arrays": msg.content["arrays"]}), reply_to=msg)
    """

    def __init__(self, client_fn: Callable[[Context], Any] | None = None) -> None:
        if client_fn is not None and not callable(client_fn):
            raise TypeError(
                f"ClientApp(client_fn=...) takes a function, got {client_fn!r}\n"
                "Hint: ClientApp(client_fn=client_fn), where client_fn(context) returns a "
                "NumPyClient"
            )
        self._client_fn = client_fn
        self._handlers: dict[str, MessageFn] = {}

    def train(self) -> Callable[[MessageFn], MessageFn]:
        """Register the function that trains: ``@app.train()``."""
        return self._register("train")

    def evaluate(self) -> Callable[[MessageFn], MessageFn]:
        """Register the function that evaluates: ``@app.evaluate()``."""
        return self._register("evaluate")

    def __call__(self, context: Context) -> Any:
        if self._client_fn is not None:
            return self._client_fn(context)
        if not self._handlers:
            raise ClientError(
                "this ClientApp has neither a client_fn nor @app.train() / @app.evaluate() "
                "functions.\nHint: ClientApp(client_fn=client_fn), or decorate functions "
                "with @app.train() and @app.evaluate()"
            )
        return _MessageClient(self._handlers, context)

    def _register(self, kind: str) -> Callable[[MessageFn], MessageFn]:
        if self._client_fn is not None:
            raise ValueError(
                f"@app.{kind}() on a ClientApp made with client_fn: use one or the other.\n"
                "Hint: app = ClientApp() for the decorators"
            )

        def register(fn: MessageFn) -> MessageFn:
            self._handlers[kind] = fn
            return fn

        return register


class _MessageClient(Client):
    """Drives Message-API functions through pollinate's native client interface."""

    def __init__(self, handlers: dict[str, MessageFn], context: Context) -> None:
        self._handlers, self._context = handlers, context

    def fit(self, arrays: Arrays, config: Config) -> tuple[Arrays, int, Metrics]:
        reply = self._ask("train", arrays, config)
        records = reply.content.array_records
        if len(records) != 1:
            raise ClientError(
                f"the @app.train() function replied with {len(records)} ArrayRecords; "
                'expected one.\nHint: RecordDict({"arrays": ArrayRecord(...), "metrics": '
                "MetricRecord({..., 'num-examples': n})})"
            )
        n, metrics = _weight(reply, "train")
        return Arrays(next(iter(records.values()))), n, metrics

    def evaluate(self, arrays: Arrays, config: Config) -> tuple[float, int, Metrics]:
        n, metrics = _weight(self._ask("evaluate", arrays, config), "evaluate")
        loss = next((v for k, v in metrics.items() if k.endswith("loss")), 0.0)
        return float(loss), n, metrics

    def _ask(self, kind: str, arrays: Arrays, config: Config) -> Message:
        handler = self._handlers.get(kind)
        if handler is None:
            raise ClientError(f"this ClientApp has no @app.{kind}() function")
        content = RecordDict({"arrays": ArrayRecord(arrays), "config": ConfigRecord(config)})
        round_ = str(config.get(ROUND_KEY, ""))
        reply = handler(Message(content, metadata=Metadata(kind, round_)), self._context)
        if not isinstance(reply, Message):
            raise ClientError(
                f"the @app.{kind}() function returned {type(reply).__name__}, not a Message."
                "\nHint: return Message(content=RecordDict({...}), reply_to=msg)"
            )
        return reply


def _weight(reply: Message, kind: str) -> tuple[int, Metrics]:
    """The reply's ``num-examples`` and its other metrics (all its MetricRecords merged)."""
    metrics: dict[str, Any] = {}
    for record in reply.content.values():
        if isinstance(record, MetricRecord):
            metrics.update(metric_values(record))
    n = metrics.pop(WEIGHT_KEY, None)
    if isinstance(n, float) and n.is_integer():
        n = int(n)
    if isinstance(n, bool) or not isinstance(n, int):
        raise ClientError(
            f"the @app.{kind}() reply's MetricRecord has {WEIGHT_KEY}={n!r}; expected the "
            f"number of examples.\nHint: MetricRecord({{..., '{WEIGHT_KEY}': len(dataset)}})"
        )
    return n, metrics
