"""How a round is carried out: the interface the run loop drives, and the choice of one.

The loop (``run.py``) knows rounds, checkpoints and centralized evaluation; everything a
round does with nodes is a ``RoundProtocol``'s: plain rounds (``plain.py``), SecAgg+ rounds
(``secure.py``), buffered asynchronous steps (``buffered.py``). The protocol is chosen once
per run, from what the strategy and the ServerApp declare (``Strategy.rounds``,
``ServerApp.secure_aggregation``); the loop never asks what class a strategy is.

To add a protocol (compression, say): implement ``RoundProtocol`` in its own module, and
choose it in ``protocol_for`` from a declaration on the strategy or the ServerApp.
"""

from __future__ import annotations

from typing import Protocol, cast

from pollinate.loop.app import ServerApp
from pollinate.loop.buffered import BufferedRounds, BufferedStrategy
from pollinate.loop.plain import PlainRounds
from pollinate.loop.recorder import RoundRecorder
from pollinate.loop.secure import SecureRounds
from pollinate.loop.stages import Stages
from pollinate.records import Arrays
from pollinate.strategy.base import Rounds, Strategy


class RoundProtocol(Protocol):
    """Carries out rounds of a run: their fit, then their federated evaluation."""

    def fit(self, rounds: RoundRecorder, arrays: Arrays) -> Arrays:
        """The next global arrays from ``arrays``; what happened goes to ``rounds``."""
        ...

    def evaluate(self, rounds: RoundRecorder, arrays: Arrays) -> None:
        """Federated evaluation of ``arrays`` (nothing if the protocol has none)."""
        ...

    def close(self) -> None:
        """The run is over: let go of what the protocol holds (threads, tasks in flight)."""
        ...


def protocol_for(app: ServerApp, stages: Stages) -> RoundProtocol:
    """The protocol ``app`` declares: buffered steps for ``Rounds.BUFFERED``; SecAgg+ when
    the ServerApp asks for secure aggregation; plain rounds otherwise."""
    if app.strategy.rounds is Rounds.BUFFERED:
        return BufferedRounds(stages, cast(BufferedStrategy, app.strategy))
    strategy = cast(Strategy, app.strategy)
    if app.secure_aggregation is not None:
        return SecureRounds(stages, strategy, app.secure_aggregation)
    return PlainRounds(stages, strategy)
