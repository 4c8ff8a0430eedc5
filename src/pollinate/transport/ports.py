"""The hub's gRPC servers: the fleet API for nodes and the control API for users.

This package is the only place that imports ``grpc``; it turns RPCs into calls on a ``Hub``
and back. The servers run on one asyncio event loop in a thread of their own (``grpc.aio``):
a call that waits (a long-poll, a stalled upload, a log follower, a call that never sends its
request) costs a coroutine, not a thread, so no number of idle calls exhausts the hub. Hub
calls that may block run in a small thread pool; every wait in them is short.

Messages travel as wire chunks of at most ``CHUNK_BYTES``, so no transfer needs a
whole-message gRPC limit and memory per transfer stays about one copy of the arrays.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc

from pollinate.hub.hub import Hub
from pollinate.transport import FLEET_SERVER_OPTIONS
from pollinate.transport.control_service import ControlService
from pollinate.transport.fleet_service import EnrolService, FleetService, Wakeups, fleet_handler

log = logging.getLogger("pollinate.transport")

HUB_THREADS = 16
"""Threads that run hub calls (SQLite, fsync, signing) for all three ports together."""
STREAMS_PER_CONNECTION = 32
"""Calls one connection may have open at once; a node uses three."""
STOP_SECONDS = 8.0
"""``HubPorts.stop`` returns within about this long, whatever calls are open."""


@dataclass
class HubPorts:
    """The running servers, the ports they bound (enrol_port 0 when insecure), and the event
    loop thread they run on."""

    fleet_port: int
    control_port: int
    enrol_port: int = 0
    _loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop, repr=False)
    _servers: list[grpc.aio.Server] = field(default_factory=list, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)
    _pool: ThreadPoolExecutor | None = field(default=None, repr=False)

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
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

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
    fleet_address: str,
    control_address: str | None,
    enrol_address: str | None = None,
) -> HubPorts:
    """Start the fleet, control and (with TLS) enrolment servers; returns once they listen.
    ``control_address`` None serves no control port (a hub its owner drives in-process).

    With ``hub.credentials`` the fleet port speaks mutual TLS (a node's id is the one its
    certificate names) and the enrolment port server-side TLS with the pinned identity;
    without them (``--insecure``) the fleet port is plain text and there is no enrolment.
    """
    pool = ThreadPoolExecutor(HUB_THREADS, thread_name_prefix="hub")
    servers = HubPorts(0, 0, _pool=pool)
    started: Future[None] = Future()

    def run_loop() -> None:
        asyncio.set_event_loop(servers._loop)
        try:
            servers._loop.run_until_complete(
                _start(servers, hub, pool, (fleet_address, control_address, enrol_address))
            )
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
    addresses: tuple[str, str | None, str | None],
) -> None:
    fleet_address, control_address, enrol_address = addresses
    tls = hub.credentials
    options = [*FLEET_SERVER_OPTIONS, ("grpc.max_concurrent_streams", STREAMS_PER_CONNECTION)]
    fleet = grpc.aio.server(options=options)
    wakeups = Wakeups(asyncio.get_running_loop())
    service = FleetService(hub, pool, tls is not None, wakeups)
    fleet.add_generic_rpc_handlers((fleet_handler(service),))
    servers._servers = [fleet]
    if control_address is not None:
        control = grpc.aio.server(options=options)
        control.add_generic_rpc_handlers((ControlService(hub, pool).handler(),))
        servers.control_port = control.add_insecure_port(control_address)
        servers._servers.append(control)
    if tls is None:
        servers.fleet_port = fleet.add_insecure_port(fleet_address)
    else:
        mutual = grpc.ssl_server_credentials(
            [(tls.server_key, tls.server_cert)], tls.ca.ca_pem, require_client_auth=True
        )
        servers.fleet_port = fleet.add_secure_port(fleet_address, mutual)
        enrol = grpc.aio.server(options=options)
        enrol.add_generic_rpc_handlers((fleet_handler(EnrolService(hub, pool)),))
        server_only = grpc.ssl_server_credentials([(tls.enrol_key, tls.enrol_cert)])
        servers.enrol_port = enrol.add_secure_port(enrol_address or "127.0.0.1:0", server_only)
        servers._servers.append(enrol)
    for server in servers._servers:
        await server.start()
