"""A node's ``/healthz`` and ``/readyz``, for Kubernetes' probes (docs/kubernetes.md), and
its ``/metrics`` (``metrics.py``).

``/healthz`` (liveness) is 200 while the agent has not stopped: its process answers HTTP.
``/readyz`` (readiness) is 200 only when the node can do a task now: it holds a node id from
the hub (enrolled, with a certificate still valid when it uses TLS), the hub answered a
heartbeat recently, and its app is loaded. Anything else is 503 with the reason as one line
of plain text, so ``kubectl describe pod`` says why a node is not ready.

The server is the standard library's, one thread per request, and binds loopback unless
told otherwise (``pollinate node --health-address 0.0.0.0:8081`` in a pod). It reads only the
path of a request; whatever else a client sends is ignored.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pollinate.text import inert

TEXT_TYPE = "text/plain; charset=utf-8"
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # Prometheus's text format
Check = Callable[[], str | None]
"""Why the node is not live (or ready) now, or None when it is."""


class HealthServer:
    """Serves ``/healthz`` and ``/readyz`` from two checks, and ``/metrics`` from
    ``metrics`` (Prometheus's text format), on ``address`` until ``stop``."""

    def __init__(
        self, address: str, live: Check, ready: Check, metrics: Callable[[], bytes]
    ) -> None:
        host, _, port = address.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        if not port.isdigit():
            raise ValueError(
                f"health address {address!r} has no port.\n"
                "Hint: --health-address 127.0.0.1:8081 (HOST:PORT; port 0 picks a free one)."
            )
        checks = {"/healthz": live, "/readyz": ready}
        server_class = _ServerV6 if ":" in host else ThreadingHTTPServer
        self._server = server_class((host, int(port)), _handler(checks, metrics))
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="node-health", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5.0)


class _ServerV6(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def _handler(
    checks: dict[str, Check], metrics: Callable[[], bytes]
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = 10  # a client that sends nothing holds a thread for at most this long

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, metrics(), METRICS_TYPE)
                return
            check = checks.get(path)
            if check is None:
                self._send(404, b"not found: try /healthz, /readyz or /metrics\n")
                return
            problem = check()
            self._send(503 if problem else 200, inert(problem or "ok").encode() + b"\n")

        def _send(self, status: int, body: bytes, kind: str = TEXT_TYPE) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Cache-Control", "no-store")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # a probe every few seconds would fill the node's log

    return Handler
