"""Flower's classic calls, ``start_server`` and ``start_numpy_client`` / ``start_client``.

A script written for Flower's classic tutorial runs with only its ``flwr`` imports changed::

    history = start_server(server_address="127.0.0.1:8080",
                           config=ServerConfig(num_rounds=3), strategy=FedAvg())
    start_numpy_client(server_address="127.0.0.1:8080", client=FlowerClient())  # each site

Both map onto pollinate's deployment engine, in insecure mode as Flower's classic calls are
(no TLS, no enrolment: a warning is logged, as ``pollinate hub --insecure`` prints one):

- ``start_server`` makes a ``Hub`` on a private temporary data dir, serves its fleet port at
  ``server_address`` (``transport.serve``), runs the strategy with pollinate's run loop
  over a ``HubGrid`` (rounds wait for ``min_available_clients`` through the loop's own node
  wait), then stops serving, removes the data dir and returns Flower's ``History``.
- ``start_client`` is a node: a heartbeat with a name, long-polls for tasks, each answered
  through pollinate's handler table (``client.handle``) with the given client. It has no
  app directory, so no app hash is checked.

When a client is done (the invariant that lets its script end): a client that has reached
the server returns once the server has been unreachable for ``END_GRACE`` seconds and
``END_TRIES`` tries in a row, which is how a classic server ends its run (it stops serving;
its data dir, and with it the run, is gone, so there is nothing to reconnect to). Before it
first reaches the server it waits for it, up to ``max_retries`` attempts or
``max_wait_time`` seconds (Flower's arguments; None: no bound), and raises
``HubUnavailable`` then.
"""

from __future__ import annotations

import itertools
import logging
import os
import secrets
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pollinate.client.client import Context, handle
from pollinate.client.handlers import Handlers
from pollinate.errors import PollinateError
from pollinate.flower.server import ServerConfig
from pollinate.flower.strategy import FedAvg, _FlowerStrategy
from pollinate.hub.grid import HubGrid
from pollinate.hub.hub import Hub
from pollinate.loop import history as loop_history
from pollinate.loop.run import run
from pollinate.records import Message, Scalar
from pollinate.transport.client import FleetClient, HubRefused, HubUnavailable, PulledTask
from pollinate.transport.ports import HubPorts, serve

log = logging.getLogger("pollinate.flower")

RUN_ID = "classic"
"""The one run of a ``start_server`` call (its hub holds no other)."""
PULL_WAIT = 20.0
"""Seconds a client's long-poll waits for a task before it asks again."""
END_GRACE = 5.0
"""Seconds a client that reached the server goes on trying once it is unreachable, before
it takes the run as over: long enough for a loaded machine's slow answer, short enough that
a script ends soon after its server."""
END_TRIES = 3
"""Heartbeats a client tries, at least, before it takes an unreachable server as gone."""
STOP_GRACE = 1.0
"""Seconds the server's open calls get to finish when it stops serving."""
INSECURE = (
    "insecure: no TLS, no authentication. Anyone who can reach %s can join this run and read "
    "its models. Local experiments only; for more, run `pollinate hub` and `pollinate node`."
)

Series = list[tuple[int, Scalar]]


@dataclass
class History:
    """What Flower's classic ``start_server`` returns: losses as ``(round, loss)`` pairs and
    metrics as ``{name: [(round, value), ...]}``, distributed (the clients' evaluation and
    fit) and centralized (the strategy's ``evaluate_fn``, from round 0)."""

    losses_distributed: list[tuple[int, float]] = field(default_factory=list)
    losses_centralized: list[tuple[int, float]] = field(default_factory=list)
    metrics_distributed_fit: dict[str, Series] = field(default_factory=dict)
    metrics_distributed: dict[str, Series] = field(default_factory=dict)
    metrics_centralized: dict[str, Series] = field(default_factory=dict)

    @classmethod
    def of(cls, history: loop_history.History) -> History:
        """Flower's view of a pollinate run's history."""
        flower = cls()
        for record in history.rounds:
            rnd = record.round
            _add(rnd, record.evaluate, flower.losses_distributed, flower.metrics_distributed)
            _add(rnd, record.centralized, flower.losses_centralized, flower.metrics_centralized)
            for name, value in record.fit.items():
                flower.metrics_distributed_fit.setdefault(name, []).append((rnd, value))
        return flower


def _add(
    rnd: int,
    results: dict[str, Scalar],
    losses: list[tuple[int, float]],
    metrics: dict[str, Series],
) -> None:
    if "loss" not in results:
        return  # no evaluation this round: Flower records nothing either
    losses.append((rnd, float(results["loss"])))
    for name, value in results.items():
        if name != "loss":
            metrics.setdefault(name, []).append((rnd, value))


# --- the server ---------------------------------------------------------------------------


def start_server(
    *,
    server_address: str = "[::]:8080",
    server: object = None,
    config: ServerConfig | None = None,
    strategy: _FlowerStrategy | None = None,
    client_manager: object = None,
    grpc_max_message_length: int = 2_147_483_647,
    certificates: tuple[bytes, bytes, bytes] | None = None,
) -> History:
    """Serve one run of ``strategy`` at ``server_address`` to clients started with
    ``start_numpy_client`` / ``start_client``; its ``History`` once ``config.num_rounds``
    rounds are done. Arrays travel in chunks, so ``grpc_max_message_length`` is not needed.

    >>> start_server(server_address="127.0.0.1:8080", client_manager=object())
    Traceback (most recent call last):
    ...
    ValueError: start_server(client_manager=...): not supported here.
    Hint: pollinate's loop samples clients; leave it out
    """
    _refuse_unsupported(
        "start_server",
        server=(server, "the strategy and config are the server: pass strategy=FedAvg(...)"),
        client_manager=(client_manager, "pollinate's loop samples clients; leave it out"),
        certificates=(certificates, _TLS_HINT),
    )
    strategy = FedAvg() if strategy is None else strategy
    if not isinstance(strategy, _FlowerStrategy):
        raise TypeError(
            f"start_server(strategy=...) takes a strategy from pollinate.flower, got "
            f"{strategy!r}.\nHint: from pollinate.flower import FedAvg; "
            "start_server(strategy=FedAvg(...))"
        )
    config = config or ServerConfig()
    app = strategy.server_app(None, config.num_rounds, config.round_timeout)
    with tempfile.TemporaryDirectory(prefix="pollinate-flower-") as data_dir:
        hub = Hub(data_dir)
        try:
            ports = _serve(hub, server_address)
        except BaseException:
            hub.close()
            hub.state.close()
            raise
        log.warning(INSECURE, server_address)
        log.info("Flower server serving at %s (port %d)", server_address, ports.port)
        grid = HubGrid(hub.fleet, hub.journal, RUN_ID, "", {})
        try:
            result = run(grid, app, run_id=RUN_ID)  # its node wait waits for the clients
        finally:
            grid.close()
            hub.close()  # open long-polls end with no task
            ports.stop(STOP_GRACE)  # clients find no server, and end (start_client)
            hub.state.close()
    return History.of(result.history)


def _serve(hub: Hub, address: str) -> HubPorts:
    try:  # no control port: this hub's one run is started here, nobody submits to it
        return serve(hub, address, control=False)
    except RuntimeError as exc:  # grpc could not bind
        raise PollinateError(
            f"start_server cannot listen at {address!r}: {exc}.\nHint: another server may "
            "use the port; pick another, e.g. server_address='127.0.0.1:8081'"
        ) from None


# --- the client ---------------------------------------------------------------------------


def start_numpy_client(
    *,
    server_address: str,
    client: Any,
    grpc_max_message_length: int = 2_147_483_647,
    root_certificates: bytes | str | None = None,
    insecure: bool | None = None,
    transport: str | None = None,
) -> None:
    """Serve ``client`` (a ``NumPyClient``) to the server at ``server_address`` until its run
    is over (``start_client``)."""
    start_client(
        server_address=server_address,
        client=client,
        grpc_max_message_length=grpc_max_message_length,
        root_certificates=root_certificates,
        insecure=insecure,
        transport=transport,
    )


_names = itertools.count()


def start_client(
    *,
    server_address: str,
    client_fn: Callable[[Context], Any] | None = None,
    client: Any = None,
    grpc_max_message_length: int = 2_147_483_647,
    root_certificates: bytes | str | None = None,
    insecure: bool | None = None,
    transport: str | None = None,
    authentication_keys: object = None,
    max_retries: int | None = None,
    max_wait_time: float | None = None,
) -> None:
    """Serve ``client`` (a ``NumPyClient`` or ``Client``), or the clients ``client_fn``
    makes, to the server at ``server_address``; returns when the server's run is over.

    Waits for a server that is not there yet, up to ``max_retries`` attempts or
    ``max_wait_time`` seconds (None: no bound), then raises ``HubUnavailable``.

    >>> start_client(server_address="127.0.0.1:8080")
    Traceback (most recent call last):
    ...
    TypeError: start_client needs client=... or client_fn=..., not both nor neither.
    Hint: start_client(server_address="127.0.0.1:8080", client=FlowerClient().to_client())
    """
    if (client is None) == (client_fn is None):
        raise TypeError(
            "start_client needs client=... or client_fn=..., not both nor neither.\n"
            'Hint: start_client(server_address="127.0.0.1:8080", '
            "client=FlowerClient().to_client())"
        )
    _refuse_unsupported(
        "start_client",
        root_certificates=(root_certificates, _TLS_HINT),
        insecure=(False if insecure is False else None, _TLS_HINT),
        authentication_keys=(authentication_keys, _TLS_HINT),
    )
    make = client_fn if client_fn is not None else (lambda context: client)
    name = f"{socket.gethostname()}-{os.getpid()}-{next(_names)}"
    _ClassicNode(server_address, make, name).serve(max_retries, max_wait_time)


class _ClassicNode:
    """A node without an app directory: its client is the object it was given."""

    def __init__(self, address: str, make: Callable[[Context], Any], name: str) -> None:
        self.fleet = FleetClient(address)
        self.address, self.name, self.session = address, name, secrets.token_hex(8)
        self.handlers = Handlers(lambda context, task: handle(make, context, task))
        self.interval = 5.0
        self.done = threading.Event()

    def serve(self, max_retries: int | None, max_wait_time: float | None) -> None:
        try:
            self._connect(max_retries, max_wait_time)
            log.warning("insecure: this client talks to %s without TLS", self.address)
            beating = threading.Thread(target=self._beat, name="flower-heartbeat", daemon=True)
            beating.start()
            while self._serve_one():
                pass
            log.info("the server at %s is gone: its run is over", self.address)
        finally:
            self.done.set()
            self.fleet.close()

    def _connect(self, max_retries: int | None, max_wait_time: float | None) -> None:
        """The first heartbeat, retried with exponential backoff while no server answers."""
        started, delay = time.monotonic(), 0.25
        for attempt in itertools.count(1):
            try:
                self._heartbeat()
                log.info("connected to %s as node %d", self.address, self.fleet.node_id)
                return
            except HubUnavailable as exc:
                waited = time.monotonic() - started
                if (max_retries is not None and attempt > max_retries) or (
                    max_wait_time is not None and waited + delay > max_wait_time
                ):
                    raise HubUnavailable(
                        f"no server at {self.address} after {attempt} attempts in "
                        f"{waited:.1f}s ({exc}).\nHint: start the server first "
                        "(start_server(server_address=...)), check the address, or wait "
                        "longer (max_wait_time=..., max_retries=...)"
                    ) from None
                if attempt == 1:
                    log.info("waiting for the server at %s", self.address)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _serve_one(self) -> bool:
        """Pull one task and answer it; False once the server is gone."""
        try:
            task = self.fleet.pull_task(PULL_WAIT)
        except (HubUnavailable, HubRefused) as exc:
            # a server that stops serving cancels the open long-poll (it may read as either)
            log.debug("pull failed: %s", exc)
            if self._gone():
                return False
            time.sleep(0.5)  # the server is there: do not spin on a refused pull
            return True
        if task is not None:
            return self._push(self._answer(task))
        return True

    def _answer(self, task: PulledTask) -> Message:
        node_id = self.fleet.node_id or 0
        context = Context(node_id, node_id, 1, run_config=task.run_config)
        return self.handlers.answer(context, task.message)

    def _push(self, reply: Message) -> bool:
        """Push, again while the server is away; False if it is gone."""
        while True:
            try:
                self.fleet.push_reply(reply)
                return True
            except HubRefused as exc:
                log.warning("the server refused the reply to %s: %s", reply.task_id, exc)
                return True
            except HubUnavailable:
                if self._gone():
                    return False
                time.sleep(0.5)

    def _gone(self) -> bool:
        """The server stays unreachable for ``END_GRACE`` seconds and ``END_TRIES`` tries in
        a row (a busy server whose answer times out is not gone: it answers a later try)."""
        ends, tries = time.monotonic() + END_GRACE, 0
        while time.monotonic() < ends or tries < END_TRIES:
            try:
                self._heartbeat()
                return False
            except HubUnavailable:
                tries += 1
                time.sleep(0.5)
        return True

    def _heartbeat(self) -> None:
        self.interval = self.fleet.heartbeat("", {}, self.name, self.session)

    def _beat(self) -> None:
        while not self.done.wait(self.interval):
            try:
                self._heartbeat()
            except PollinateError as exc:  # the pull loop decides whether the server is gone
                log.debug("heartbeat failed: %s", exc)


_TLS_HINT = (
    "the classic calls run without TLS, for local experiments; with TLS, run `pollinate hub`, "
    "`pollinate node --token ...` and `pollinate run APP --hub HOST:PORT`"
)


def _refuse_unsupported(call: str, **given: tuple[object, str]) -> None:
    """ValueError for the first Flower argument given that pollinate's classic calls do not
    carry out, with what to do instead."""
    for name, (value, hint) in given.items():
        if value is not None:
            raise ValueError(f"{call}({name}=...): not supported here.\nHint: {hint}")
