"""A TCP proxy that adds latency (this kernel has no netem qdisc to do it).

Data read from one side is delivered to the other ``delay`` seconds later, in order; each
direction has its own delay line and writer thread, so latency is added without cutting
bandwidth. Every thread is a daemon and ends by itself after ``stop()``.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

STOP_TIMEOUT = 5.0  # a thread asked to stop
_WAKE = 0.2  # how often blocked proxy threads look up to see whether to stop


class _DelayLine:
    """One direction of a connection: each chunk put in comes out ``delay`` later, in order.

    Chunks wait side by side, so latency is added without cutting bandwidth. At most ``limit``
    bytes wait; past that the reader stops reading and TCP pushes back on the sender.
    """

    def __init__(self, limit: int) -> None:
        self._items: deque[tuple[float, bytes | None]] = deque()
        self._pending = 0
        self._limit = limit
        self._changed = threading.Condition()
        self.aborted = False

    def put(self, due: float, data: bytes | None) -> bool:
        """Queue ``data`` (None: end of stream) for ``due``; False once aborted."""
        with self._changed:
            while self._pending >= self._limit and not self.aborted:
                self._changed.wait(_WAKE)
            if self.aborted:
                return False
            self._items.append((due, data))
            self._pending += len(data or b"")
            self._changed.notify_all()
            return True

    def get(self) -> bytes | None:
        """The next chunk once due; None at end of stream or once aborted."""
        with self._changed:
            while not self.aborted:
                wait = self._items[0][0] - time.monotonic() if self._items else _WAKE
                if wait <= 0:
                    data = self._items.popleft()[1]
                    self._pending -= len(data or b"")
                    self._changed.notify_all()
                    return data
                self._changed.wait(min(wait, _WAKE))
            return None

    def abort(self) -> None:
        with self._changed:
            self.aborted = True
            self._items.clear()
            self._changed.notify_all()


class _Connection:
    """A client socket and its upstream socket, joined by two delay lines."""

    def __init__(self, proxy: DelayProxy, client: socket.socket, upstream: socket.socket) -> None:
        self._proxy, self._sockets = proxy, (client, upstream)
        self._lines = (_DelayLine(proxy.buffer_limit), _DelayLine(proxy.buffer_limit))
        self._lock = threading.Lock()
        self._open_directions = 2
        self._closed = False

    def start(self, spawn: Callable[..., None]) -> None:
        client, upstream = self._sockets
        for source, sink, line in (
            (client, upstream, self._lines[0]),
            (upstream, client, self._lines[1]),
        ):
            spawn(self._read, source, line)
            spawn(self._write, line, sink)

    def _read(self, source: socket.socket, line: _DelayLine) -> None:
        try:
            while data := source.recv(65536):
                if not line.put(time.monotonic() + self._proxy.delay, data):
                    return
        except OSError:  # reset, or closed by close()
            self.close()
            return
        line.put(time.monotonic() + self._proxy.delay, None)  # the FIN is delayed too

    def _write(self, line: _DelayLine, sink: socket.socket) -> None:
        try:
            while (data := line.get()) is not None:
                sink.sendall(data)
            if line.aborted:
                return
            sink.shutdown(socket.SHUT_WR)  # pass on a half-close: the other way may go on
        except OSError:
            self.close()
            return
        with self._lock:
            self._open_directions -= 1
            done = self._open_directions == 0
        if done:
            self.close()

    def close(self) -> None:
        """Close both sockets, dropping what is still in flight. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for line in self._lines:
            line.abort()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked on it
            sock.close()
        self._proxy._forget(self)


class DelayProxy:
    """A TCP proxy on ``listen`` (port 0: any free port) to ``target`` that delivers data in
    each direction ``delay`` seconds after it arrives (a round trip gains 2 x delay).

    ``delay`` may be changed while it runs; it applies to data read from then on. Closing
    either side is passed on (after the delay), and a connection's sockets are closed once
    both directions have ended or either fails. ``stop()`` closes everything and waits for
    its (daemon) threads.
    """

    def __init__(
        self,
        target: tuple[str, int],
        delay: float,
        listen: tuple[str, int] = ("127.0.0.1", 0),
        *,
        buffer_limit: int = 64 << 20,
        connect_timeout: float = 10.0,
    ) -> None:
        self.target, self.delay = target, delay
        self.buffer_limit, self.connect_timeout = buffer_limit, connect_timeout
        self._listener = socket.create_server(listen)
        self._listener.settimeout(_WAKE)
        self.host, self.port = self._listener.getsockname()[:2]
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._connections: set[_Connection] = set()
        self._spawn(self._accept)

    @property
    def address(self) -> str:
        """``host:port`` to connect to instead of the target."""
        return f"{self.host}:{self.port}"

    def __enter__(self) -> DelayProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop listening, close every connection, and wait (bounded) for every thread."""
        self._stopped.set()
        self._listener.close()
        with self._lock:
            connections, threads = list(self._connections), list(self._threads)
        for connection in connections:
            connection.close()
        deadline = time.monotonic() + STOP_TIMEOUT
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if alive := [thread.name for thread in threads if thread.is_alive()]:
            raise RuntimeError(f"DelayProxy threads still running after stop(): {alive}")

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(
            target=target, args=args, daemon=True, name=f"DelayProxy-{self.port}"
        )
        with self._lock:
            self._threads = [thread for thread in self._threads if thread.is_alive()]
            self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:  # the listener was closed by stop()
                return
            self._spawn(self._open, client)

    def _open(self, client: socket.socket) -> None:
        """Connect upstream for a new client (in its own thread: connecting may take time)."""
        upstream = self._connect()
        if upstream is None:
            client.close()  # the client sees the target's refusal as a closed connection
            return
        for sock in (client, upstream):
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # add no Nagle delay
        connection = _Connection(self, client, upstream)
        with self._lock:
            if not self._stopped.is_set():
                self._connections.add(connection)
        if self._stopped.is_set():
            connection.close()
            return
        connection.start(self._spawn)

    def _connect(self) -> socket.socket | None:
        """A connection to the target, or None if refused, timed out, or stopped meanwhile.

        Short attempts, so that stop() need not wait for a connect to a silent target.
        """
        deadline = time.monotonic() + self.connect_timeout
        while not self._stopped.is_set() and time.monotonic() < deadline:
            try:
                return socket.create_connection(self.target, timeout=_WAKE)
            except TimeoutError:
                continue
            except OSError:
                return None
        return None

    def _forget(self, connection: _Connection) -> None:
        with self._lock:
            self._connections.discard(connection)
