"""How a node answers each kind of message: one table, for virtual clients and real nodes.

The simulation grid (``simulation/grid.py``) and the node agent (``node/agent.py``) both
answer an instruction with ``Handlers.answer``; neither asks which kind it holds. The app's
own kinds (fit, evaluate, get_arrays) go to ``client.handle``; a protocol that wraps the
app's answer (a stage of secure aggregation, which trains inside its mask stage) registers
its kind with a ``KindHandler``.

To add a message kind: add it to ``records.MessageKind``, write its ``KindHandler`` beside
the protocol it belongs to, and register it where the protocol's node side is built
(``secagg.node.handlers``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from pollinate.client.client import Context
from pollinate.records import Message, MessageKind

AppAnswer = Callable[[Context, Message], Message]
"""The app's own reply to a fit, evaluate or get_arrays instruction."""

KindHandler = Callable[[Message, Context, AppAnswer], Message]
"""The reply to a kind that wraps the app's answer: ``(instruction, context, app)``."""


@dataclass(frozen=True)
class Handlers:
    """The reply to every kind of instruction one node (or virtual client) gets."""

    app: AppAnswer
    kinds: Mapping[MessageKind, KindHandler] = field(default_factory=dict)

    def answer(self, context: Context, instruction: Message) -> Message:
        handler = self.kinds.get(instruction.kind)
        if handler is None:
            return self.app(context, instruction)
        return handler(instruction, context, self.app)
