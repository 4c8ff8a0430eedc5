"""A misbehaving network for tests: namespaces joined to this host by veth pairs, faults
applied with nftables inside each namespace, and a TCP proxy that adds latency.

Each namespace is a separate network stack: a process started in it (``ns.popen``) sees only
loopback and its veth, and reaches the root namespace at ``ns.host_address``; the root
namespace reaches it at ``ns.address``. Namespaces do not reach each other (the root
namespace does not forward). Faults live in a table ``inet pollinate_faults`` inside the
namespace, so the root namespace's firewall is never touched, and a fault on one namespace
leaves the others alone. ARP is not filtered (``inet`` tables do not see it), so a healed
namespace needs no neighbour rediscovery.

A packet dropped in the output hook is dropped before it leaves the namespace's stack, and
the kernel tells its sender: a UDP ``sendto`` inside fails with EPERM (TCP hides it and just
retransmits, as it would after real loss). Processes outside see only silence.

This kernel has no netem qdisc, hence latency from ``DelayProxy`` and loss from nftables
``numgen random``. Everything needs root; ``namespaces_supported()`` says why not, for a skip.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import secrets
import shutil
import socket
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

TABLE = "pollinate_faults"
COMMAND_TIMEOUT = 10.0  # an `ip`/`nft` command; they take milliseconds
STOP_TIMEOUT = 5.0  # a process or thread asked to stop
_WAKE = 0.2  # how often blocked proxy threads look up to see whether to stop
# One base chain per fault and direction: each is flushed on its own, and a packet is dropped
# if any chain drops it. Loopback is exempt, so a partitioned process still reaches itself.
_CHAINS = {"loss_in": "input", "loss_out": "output", "cut_in": "input", "cut_out": "output"}


def _run(args: Sequence[str], stdin: str | None = None) -> str:
    """Run a setup command to completion; its stderr becomes the error if it fails."""
    done = subprocess.run(
        args, input=stdin, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"`{' '.join(args)}` failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


@functools.cache
def namespaces_supported() -> str | None:
    """None if this process can build networks here, else why not (a reason for a skip).

    Tries the real thing, a namespace with a veth, since containers often refuse it to root.
    """
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "`ip` (iproute2) is not installed"
    name = f"pn-probe-{secrets.token_hex(3)}"
    try:
        _run(["ip", "netns", "add", name])
    except RuntimeError as error:
        return f"the kernel refuses network namespaces: {error}"
    try:
        _run(["ip", "-n", name, "link", "add", "probe0", "type", "veth", "peer", "name", "probe1"])
    except RuntimeError as error:
        return f"the kernel refuses veth pairs: {error}"
    finally:
        _run(["ip", "netns", "del", name])
    return None


def require_nft() -> None:
    """Faults need ``nft``; its absence is a broken test machine, not a reason to skip."""
    if shutil.which("nft") is None:
        raise RuntimeError("`nft` is not installed: install it with `apt-get install -y nftables`")


@dataclass
class Namespace:
    """One network namespace, its veth to the root namespace, and the faults applied to it."""

    name: str
    address: str  # this namespace's IP, on its veth
    host_address: str  # the root namespace's IP on the same veth: reach the host here
    host_veth: str  # the root-side end of the veth
    processes: list[subprocess.Popen[Any]] = field(default_factory=list)

    @property
    def exec_prefix(self) -> list[str]:
        """Put this before any command to run it inside the namespace."""
        return ["ip", "netns", "exec", self.name]

    def popen(self, args: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``args`` inside the namespace; it is killed when the network is torn down."""
        process = subprocess.Popen([*self.exec_prefix, *args], **kwargs)
        self.processes.append(process)
        return process

    def run(
        self, args: Sequence[str], timeout: float = COMMAND_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        """Run ``args`` inside the namespace to completion (bounded), capturing its output."""
        return subprocess.run(
            [*self.exec_prefix, *args], capture_output=True, text=True, timeout=timeout, check=False
        )

    def drop_random(self, percent: float) -> None:
        """Drop ``percent`` of packets (0.01 % steps) in each direction, chosen at random.

        Each direction is drawn separately, so a round trip survives with (1 - p)^2. Replaces
        any earlier loss; 0 removes it. A partition is left as it is.
        """
        if not 0 <= percent <= 100:
            raise ValueError(f"percent must be within 0..100, not {percent}")
        share = round(percent * 100)  # nft refuses `mod 10000 < 10000`: 100 % is a plain drop
        verdict = "drop" if share == 10000 else f"numgen random mod 10000 < {share} drop"
        self._nft(_rules("loss", verdict if share else None))

    def partition(self) -> None:
        """Cut the namespace off: every packet in or out of its veth is dropped, as when a
        cable is pulled. Loopback inside keeps working.

        No resets or ICMP errors reach anyone; TCP inside retransmits and times out as over a
        dead link. Only a UDP or raw send inside fails at once, with EPERM (see module doc).
        """
        self._nft(_rules("cut", "drop"))

    def heal(self) -> None:
        """End a partition; random loss set by ``drop_random`` stays."""
        self._nft(_rules("cut", None))

    def clear_faults(self) -> None:
        """End every fault: partition and loss."""
        self._nft(_rules("cut", None) + _rules("loss", None))

    def ruleset(self) -> str:
        """The namespace's nftables rules as ``nft`` lists them: for failure reports."""
        return _run([*self.exec_prefix, "nft", "list", "table", "inet", TABLE])

    def _nft(self, commands: Sequence[str]) -> None:
        """Apply ``commands`` in one ``nft -f`` transaction: all of them or none."""
        _run([*self.exec_prefix, "nft", "-f", "-"], stdin="\n".join(commands) + "\n")


Net = tuple[Namespace, ...]  # the namespaces of one network(), in order


def _rules(fault: str, verdict: str | None) -> list[str]:
    """nft commands that empty ``fault``'s two chains, then (unless None) apply ``verdict``
    to every packet in and out, except on loopback."""
    commands = [f"flush chain inet {TABLE} {fault}_{way}" for way in ("in", "out")]
    if verdict is not None:
        commands += [
            f'add rule inet {TABLE} {fault}_in iifname != "lo" {verdict}',
            f'add rule inet {TABLE} {fault}_out oifname != "lo" {verdict}',
        ]
    return commands


@contextlib.contextmanager
def network(count: int) -> Iterator[Net]:
    """``count`` namespaces ``pn-<hex>-<i>``, namespace ``i`` on subnet 10.N.i.0/30 (host .1,
    namespace .2) for an N no address here uses. All is removed on exit, even on failure."""
    if not 1 <= count <= 250:
        raise ValueError(f"count must be within 1..250, not {count}")
    require_nft()
    token, octet = secrets.token_hex(3), _free_octet()
    created: list[Namespace] = []
    try:
        for i in range(count):
            namespace = Namespace(
                f"pn-{token}-{i}", f"10.{octet}.{i}.2", f"10.{octet}.{i}.1", f"pn{token}h{i}"
            )
            _run(["ip", "netns", "add", namespace.name])
            created.append(namespace)
            _build(namespace)
        yield tuple(created)
    finally:
        _teardown(created)


def _free_octet() -> int:
    """A second octet in 10.200-254 that no address or route here mentions."""
    used = _run(["ip", "-4", "-o", "addr", "show"]) + _run(["ip", "-4", "route", "show"])
    taken = {int(octet) for octet in re.findall(r"\b10\.(\d+)\.", used)}
    free = [octet for octet in range(200, 255) if octet not in taken]
    if not free:
        raise RuntimeError("no free 10.200-254.x.x subnet for test namespaces")
    return secrets.choice(free)


def _build(ns: Namespace) -> None:
    """Wire a fresh namespace: veth, addresses, routes, and empty fault chains."""
    inside = ["ip", "-n", ns.name]
    for command in (
        # the peer is made inside the namespace, so its name cannot clash with the host's
        f"ip link add {ns.host_veth} type veth peer name eth0 netns {ns.name}",
        f"ip addr add {ns.host_address}/30 dev {ns.host_veth}",
        f"ip link set {ns.host_veth} up",
        f"addr add {ns.address}/30 dev eth0",
        "link set eth0 up",
        "link set lo up",
        # via the host it also reaches the host's other addresses (not other namespaces)
        f"route add default via {ns.host_address}",
    ):
        words = command.split()
        _run(words if words[0] == "ip" else [*inside, *words])
    chains = [
        f"add chain inet {TABLE} {chain} {{ type filter hook {hook} priority 0; policy accept; }}"
        for chain, hook in _CHAINS.items()
    ]
    ns._nft([f"add table inet {TABLE}", *chains])


def _teardown(namespaces: Sequence[Namespace]) -> None:
    """Kill what runs inside, drop the fault tables, delete veths and namespaces; try every
    step, then report what failed."""
    errors: list[str] = []
    for ns in namespaces:
        for process in ns.processes:
            _stop_process(process)
    for ns in namespaces:
        # A process started without ns.popen may keep the namespace alive: leave it no faults.
        # The veth is deleted here because a deleted namespace's devices go away asynchronously.
        # Both may be missing if setup failed half way, and go with the namespace anyway.
        for args in (
            [*ns.exec_prefix, "nft", "delete", "table", "inet", TABLE],
            ["ip", "link", "del", ns.host_veth],
        ):
            subprocess.run(args, capture_output=True, timeout=COMMAND_TIMEOUT, check=False)
        try:
            _run(["ip", "netns", "del", ns.name])
        except (RuntimeError, subprocess.TimeoutExpired) as error:
            errors.append(str(error))
    if errors:
        raise RuntimeError("network teardown failed:\n" + "\n".join(errors))


def _stop_process(process: subprocess.Popen[Any]) -> None:
    """SIGTERM, then SIGKILL if it lingers: it must not outlive its network."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT)


# --- latency ---------------------------------------------------------------------------------


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
