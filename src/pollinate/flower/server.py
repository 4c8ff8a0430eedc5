"""Flower's ``ServerApp``, both generations, as a pollinate ``server_fn``.

A ``ServerApp`` is callable as ``server_fn(run_config)`` and returns pollinate's
``ServerApp``, so ``[tool.flwr.app.components] serverapp = "pkg.server_app:app"`` names it
directly and ``pollinate run`` (simulation) or a hub runs it with pollinate's loop:

- ``ServerApp(server_fn=server_fn)`` (Flower 1.x): ``server_fn(context)`` returns
  ``ServerAppComponents(strategy=FedAvg(...), config=ServerConfig(num_rounds=...))``.
- ``ServerApp()`` with ``@app.main()`` (the Message API): ``main(grid, context)`` runs in a
  thread of its own and calls ``strategy.start(grid=grid, ...)``. That call hands the run
  to the engine (``_Handover.hand_over``): ``server_fn`` returns it, the engine's loop runs
  it on its own grid, and when the last round is recorded ``start`` returns the ``Result``
  to ``main``, whose remaining code (saving the model) runs to its end before the loop
  returns. Only one ``start`` per ``main`` reaches the engine.

Invariant: ``main`` runs only while the engine's thread waits for it, so the two never run
at once.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pollinate.client.client import Context
from pollinate.errors import AppError
from pollinate.flower.strategy import _FlowerStrategy
from pollinate.loop.app import ServerApp as PollinateServerApp
from pollinate.loop.grid import Grid, Timeout
from pollinate.records import Config

MainFn = Callable[[Grid, Context], None]


@dataclass
class ServerConfig:
    """Flower 1.x's ``ServerConfig``: the number of rounds and an optional round timeout."""

    num_rounds: int = 1
    round_timeout: float | None = None


@dataclass
class ServerAppComponents:
    """What a Flower 1.x ``server_fn`` returns: a strategy and a ``ServerConfig``."""

    strategy: _FlowerStrategy | None = None
    config: ServerConfig | None = None


class ServerApp:
    """Flower's ``ServerApp``: ``ServerApp(server_fn=...)``, or ``ServerApp()`` with
    ``@app.main()``. Calling it with the run config gives pollinate's ``ServerApp``.

    >>> from pollinate.flower import FedAvg
    >>> app = ServerApp(server_fn=lambda context: ServerAppComponents(
    ...     strategy=FedAvg(), config=ServerConfig(num_rounds=2)))
    >>> app({}).num_rounds
    2
    """

    def __init__(
        self,
        server_fn: Callable[[Context], ServerAppComponents] | None = None,
        *,
        config: ServerConfig | None = None,
        strategy: _FlowerStrategy | None = None,
    ) -> None:
        self._server_fn = server_fn
        self._components = ServerAppComponents(strategy=strategy, config=config)
        self._main: MainFn | None = None

    def main(self) -> Callable[[MainFn], MainFn]:
        """Register the function that runs the server side: ``@app.main()``."""

        def register(fn: MainFn) -> MainFn:
            self._main = fn
            return fn

        return register

    def __call__(self, run_config: Config) -> PollinateServerApp:
        context = Context(node_id=0, partition_id=0, num_partitions=0, run_config=run_config)
        if self._main is not None:
            return _Handover(self._main, context).server_app()
        components = self._server_fn(context) if self._server_fn else self._components
        if not isinstance(components, ServerAppComponents):
            raise AppError(
                f"server_fn returned {type(components).__name__}, not ServerAppComponents.\n"
                "Hint: return ServerAppComponents(strategy=FedAvg(...), "
                "config=ServerConfig(num_rounds=3))"
            )
        strategy = components.strategy
        if not isinstance(strategy, _FlowerStrategy):
            raise AppError(
                f"ServerAppComponents.strategy is {strategy!r}; expected a strategy from "
                "pollinate.flower.\nHint: from pollinate.flower import FedAvg"
            )
        config = components.config or ServerConfig()
        return strategy.server_app(None, config.num_rounds, config.round_timeout)


class _Handover(Grid):
    """The grid ``main`` receives: ``start`` hands its run to the engine through it."""

    def __init__(self, main: MainFn, context: Context) -> None:
        self._main, self._context = main, context
        self._apps: queue.Queue[PollinateServerApp | BaseException | None] = queue.Queue()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run_main, name="flower-main", daemon=True)
        self._failure: BaseException | None = None
        self._handed = False

    def server_app(self) -> PollinateServerApp:
        """Start ``main`` and wait for the run it hands over (or its end, or its error)."""
        self._thread.start()
        app = self._apps.get()
        if isinstance(app, BaseException):
            raise app
        if app is None:
            raise AppError(
                "@app.main() returned without calling strategy.start(grid=grid, ...), so there "
                "is no run to carry out.\nHint: result = FedAvg().start(grid=grid, "
                "initial_arrays=arrays, num_rounds=3)"
            )
        if isinstance(app.strategy, _FlowerStrategy):  # always: only start() hands over
            app.strategy.on_last_round = self._finish
        return app

    def hand_over(self, app: PollinateServerApp) -> None:
        """In ``main``'s thread: give the run to the engine, wait for its last round."""
        if self._handed:
            raise AppError(
                "@app.main() called strategy.start() a second time; under pollinate, one run "
                "is one start().\nHint: run the second phase as an app of its own"
            )
        self._handed = True
        self._apps.put(app)
        self._done.wait()

    def _finish(self) -> None:
        """In the engine's thread, after the last round: let ``main`` run to its end."""
        self._done.set()
        self._thread.join()
        if self._failure is not None:
            raise AppError(f"@app.main() failed after its run: {self._failure!r}")

    def _run_main(self) -> None:
        try:
            self._main(self, self._context)
        except BaseException as exc:  # reported to the engine's thread, which raises it
            self._failure = exc
            self._apps.put(exc)
        else:
            self._apps.put(None)

    # A Grid for type checks only: the engine's own grid carries the run.
    def nodes(self) -> list[int]:
        raise AppError("under pollinate, pass the grid to strategy.start(grid=grid, ...)")

    def wait_for_nodes(self, count: int, timeout: float) -> list[int]:
        return self.nodes()

    def dispatch(self, instructions: Any, timeout: Timeout) -> Any:
        return iter(self.nodes())

    def close(self) -> None:
        """Nothing to release."""
