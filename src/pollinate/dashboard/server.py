"""The dashboard served inside the hub's (or a simulation's) process: uvicorn on an event loop
in a thread of its own.

``serve_dashboard(hub, "127.0.0.1:0")`` (``serve_source`` for any ``Source``: a simulation's
``LocalRun``) binds the address at once (so a port in use is an error the caller sees),
subscribes the dashboard to the source's run events, and serves until ``stop``. The runs
never wait for it: their events are handed to its loop (``feed.py``).
"""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import TYPE_CHECKING

import uvicorn

from pollinate.dashboard.app import Dashboard
from pollinate.dashboard.feed import Feed
from pollinate.dashboard.sessions import Session, Sessions
from pollinate.dashboard.source import HubSource, Source
from pollinate.hub.access import LOCAL_ADMIN, Caller

if TYPE_CHECKING:
    from pollinate.hub.hub import Hub

START_TIMEOUT = 30.0


class DashboardServer:
    """A running dashboard: its ``port``, its ``sessions``, and ``stop``.

    Example (the hub prints the first link when it starts)::

        server = serve_dashboard(hub, "127.0.0.1:0")
        print(server.login_link())   # http://127.0.0.1:PORT/login?token=...
        server.stop()
    """

    def __init__(self, source: Source, sock: socket.socket) -> None:
        self.host, self.port = sock.getsockname()[:2]
        self.sessions = Sessions()
        self.feed = Feed()
        self.dashboard = Dashboard(source, self.sessions, self.feed)
        config = uvicorn.Config(
            self.dashboard.app,
            log_level="warning",
            lifespan="off",
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)
        self._socket = sock
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = threading.Event()
        self._unsubscribe = source.subscribe(self.feed.on_event)
        self._thread = threading.Thread(target=self._serve, name="dashboard", daemon=True)
        self._thread.start()
        self._started.wait(START_TIMEOUT)

    def login_link(self, caller: Caller = LOCAL_ADMIN) -> str:
        """A one-time link that logs a browser in as ``caller`` (default: the hub's operator)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/login?token={self.sessions.login_token(caller)}"

    def open_session(self, caller: Caller) -> tuple[str, Session]:
        """A session as ``caller`` (its cookie value, the session), without a login link."""
        return self.sessions.open(caller)

    def stop(self) -> None:
        """Close every event stream, stop serving and unsubscribe from the source."""
        self._unsubscribe()
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.dashboard.closing.set)
        self._server.should_exit = True
        self._thread.join(10)
        self._socket.close()

    def _serve(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.feed.attach(self._loop)
        self._started.set()
        await self._server.serve(sockets=[self._socket])


def serve_dashboard(hub: Hub, address: str) -> DashboardServer:
    """Serve the dashboard of ``hub`` on ``address`` (``HOST:PORT``; port 0 picks a free
    one); OSError if it cannot be bound, ValueError if it is not ``HOST:PORT``."""
    return serve_source(HubSource(hub), address)


def serve_source(source: Source, address: str) -> DashboardServer:
    """Serve the dashboard of ``source`` on ``address``, as ``serve_dashboard``."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"{address!r} is not HOST:PORT")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, int(port)))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return DashboardServer(source, sock)
