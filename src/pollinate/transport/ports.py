"""The hub's one address: the fleet API for nodes, the control API for users, enrolment and
login for newcomers, all on one gRPC server.

This package is the only place that imports ``grpc``; it turns RPCs into calls on a ``Hub``
and back. The server runs on an asyncio event loop in a thread of its own (``grpc.aio``):
a call that waits (a long-poll, a stalled upload, a log follower, a call that never sends its
request) costs a coroutine, not a thread, so no number of idle calls exhausts the hub. Hub
calls that may block run in a small thread pool; every wait in them is short.

With TLS, every connection presents a client certificate (gRPC for Python cannot make one
optional): a node's, a user's, or a newcomer's guest certificate (``security.guest``). Who it
is, and so what it may call, is decided per call against the hub's own CA (``callers.py``).
The hub presents its CA-issued server certificate, or, to a client that asks for
``ENROL_SERVER_NAME``, the enrolment certificate that tokens pin.

Messages travel as wire chunks of at most ``CHUNK_BYTES``, so no transfer needs a
whole-message gRPC limit and memory per transfer stays about one copy of the arrays.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc

from pollinate.hub.access import Caller
from pollinate.hub.hub import Hub
from pollinate.security.guest import GUEST_CERT_PEM
from pollinate.transport import FLEET_SERVER_OPTIONS
from pollinate.transport.callers import Callers
from pollinate.transport.control_service import ControlService
from pollinate.transport.fleet_service import FleetService, Wakeups, fleet_handler

log = logging.getLogger("pollinate.transport")

HUB_THREADS = 16
"""Threads that run hub calls (SQLite, fsync, signing) for every call together."""
HEARTBEAT_THREADS = 4
"""Threads that run the heartbeats that write (an arrival, a restart, a new report), apart:
a beat queued behind a round's journaled replies (an fsync each) waited seconds for a thread."""
STREAMS_PER_CONNECTION = 32
"""Calls one connection may have open at once; a node uses two on its lasting connection
(heartbeat, long-poll) and one on each connection of its own a large reply takes."""
STOP_SECONDS = 8.0
"""``HubPorts.stop`` returns within about this long, whatever calls are open."""


@dataclass
class HubPorts:
    """The running server, the port it bound, and the event loop thread it runs on."""

    port: int
    _loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop, repr=False)
    _servers: list[grpc.aio.Server] = field(default_factory=list, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)
    _pool: ThreadPoolExecutor | None = field(default=None, repr=False)
    _beats: ThreadPoolExecutor | None = field(default=None, repr=False)
    fleet: FleetService | None = field(default=None, repr=False)
    """The fleet API it serves (its guards: ``fleet.uploads`` and ``fleet.downloads``, the
    transfer budgets)."""

    def stop(self, grace: float = 1.0) -> None:
        """Stop serving: calls still open after ``grace`` seconds are cancelled, and this
        returns within ``STOP_SECONDS`` whatever streams are open."""
        grace = min(grace, STOP_SECONDS / 2)
        if self._loop.is_running():
            stopping = asyncio.run_coroutine_threadsafe(self._stop_all(grace), self._loop)
            try:
                stopping.result(timeout=STOP_SECONDS)
            except Exception as exc:  # stopping must not fail a shutdown
                log.warning("the servers did not stop cleanly: %r", exc)
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=STOP_SECONDS / 2)
        for pool in (self._pool, self._beats):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)

    async def _stop_all(self, grace: float) -> None:
        await asyncio.gather(*(server.stop(grace) for server in self._servers))
        # calls the servers cancelled may still be unwinding: let them end before the loop
        # closes, or asyncio reports them destroyed while pending
        rest = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in rest:
            task.cancel()
        if rest:
            await asyncio.wait(rest, timeout=STOP_SECONDS / 4)


def serve(
    hub: Hub,
    address: str,
    *,
    control: bool = True,
    dashboard_link: Callable[[Caller], str] | None = None,
) -> HubPorts:
    """Serve the hub at ``address``; returns once it listens. ``control`` False serves no
    control API (a hub its owner drives in-process); ``dashboard_link`` makes a caller's
    one-time link to the hub's dashboard, if it serves one.

    With ``hub.credentials`` the address speaks TLS with a client certificate on every
    connection; without them (``--insecure``) it is plain text, nodes name themselves, every
    control call acts as the local admin, and there is no enrolment.
    """
    pool = ThreadPoolExecutor(HUB_THREADS, thread_name_prefix="hub")
    beats = ThreadPoolExecutor(HEARTBEAT_THREADS, thread_name_prefix="hub-heartbeat")
    servers = HubPorts(0, _pool=pool, _beats=beats)
    started: Future[None] = Future()

    def run_loop() -> None:
        asyncio.set_event_loop(servers._loop)
        try:
            served = (control, dashboard_link)
            servers._loop.run_until_complete(_start(servers, hub, pool, beats, address, served))
        except BaseException as exc:  # binding failed: the caller hears why
            started.set_exception(exc)
            servers._loop.close()
            return
        started.set_result(None)
        servers._loop.run_forever()
        servers._loop.close()

    servers._thread = threading.Thread(target=run_loop, name="hub-servers", daemon=True)
    servers._thread.start()
    started.result()
    return servers


async def _start(
    servers: HubPorts,
    hub: Hub,
    pool: ThreadPoolExecutor,
    beats: ThreadPoolExecutor,
    address: str,
    control: tuple[bool, Callable[[Caller], str] | None],
) -> None:
    options = [*FLEET_SERVER_OPTIONS, ("grpc.max_concurrent_streams", STREAMS_PER_CONNECTION)]
    server = grpc.aio.server(options=options)
    callers = Callers(hub)
    wakeups = Wakeups(asyncio.get_running_loop())
    fleet = servers.fleet = FleetService(hub, pool, callers, wakeups, heartbeats=beats)
    server.add_generic_rpc_handlers((fleet_handler(fleet),))
    serves_control, dashboard_link = control
    if serves_control:
        service = ControlService(hub, pool, callers, dashboard_link)
        server.add_generic_rpc_handlers((service.handler(),))
    servers._servers = [server]
    tls = hub.credentials
    if tls is None:
        servers.port = server.add_insecure_port(address)
    else:
        identities = [(tls.server_key, tls.server_cert), (tls.enrol_key, tls.enrol_cert)]
        trusted = tls.ca.ca_pem + GUEST_CERT_PEM  # who may finish a handshake, not who they are
        credentials = grpc.ssl_server_credentials(identities, trusted, require_client_auth=True)
        servers.port = server.add_secure_port(address, credentials)
    await server.start()
