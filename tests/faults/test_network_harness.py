"""The fault harness itself, checked with a plain echo server: faults must really happen, and
really stop, or the fault tests that rely on them prove nothing."""

from __future__ import annotations

import contextlib
import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.faults.network import Namespace, namespaces_supported, network
from tests.faults.proxy import DelayProxy

# TCP echo on HOST:PORT (PORT 0: any); with a third argument, also UDP on the same port: it
# counts datagrams and echoes them, and answers b"count?" with the count. Prints its port, and
# exits when its stdin closes, so it cannot outlive the test process.
ECHO = r"""
import socket, sys, threading
host, port = sys.argv[1], int(sys.argv[2])
tcp = socket.create_server((host, port))
port = tcp.getsockname()[1]

def echo(conn):
    with conn:
        try:
            while data := conn.recv(65536):
                conn.sendall(data)
        except OSError:
            pass

def serve_tcp():
    while True:
        conn, _ = tcp.accept()
        threading.Thread(target=echo, args=(conn,), daemon=True).start()

def serve_udp(udp):
    count = 0
    while True:
        data, peer = udp.recvfrom(2048)
        if data == b"count?":
            udp.sendto(str(count).encode(), peer)
            continue
        count += 1
        try:
            udp.sendto(data, peer)
        except PermissionError:  # what a drop in nftables' output hook looks like to UDP
            pass

threading.Thread(target=serve_tcp, daemon=True).start()
if len(sys.argv) > 3:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((host, port))
    threading.Thread(target=serve_udp, args=(udp,), daemon=True).start()
print(port, flush=True)
sys.stdin.read()
"""

# Connect to HOST:PORT, send a line, print the echo: exit 0 if it came back, 1 if not.
CLIENT = r"""
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1.0) as conn:
        conn.sendall(b"hello")
        print(conn.recv(100).decode())
except OSError as error:
    print(error)
    sys.exit(1)
"""

PORT = 7000  # a namespace's ports are all free: no need to search
DELAY = 0.2
FAST = 1.0  # how long a connection attempt may take when it should work at once


def needs_namespaces() -> None:
    if reason := namespaces_supported():
        pytest.skip(reason)


def start_echo(
    popen: Callable[..., subprocess.Popen[Any]], host: str, port: int, *, udp: bool = False
) -> tuple[subprocess.Popen[Any], int]:
    """An echo server (see ECHO) started by ``popen``; returns once it listens, with its port."""
    args = [sys.executable, "-c", ECHO, host, str(port), *(["udp"] if udp else [])]
    process = popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], 10.0)
    line = process.stdout.readline() if ready else b""
    if not line:
        process.kill()
        raise AssertionError("the echo server did not start within 10s")
    return process, int(line)


def start_ns_echo(ns: Namespace, *, udp: bool = False) -> None:
    """An echo server on ``ns.address:PORT`` inside ``ns``, killed with the network."""
    start_echo(ns.popen, "0.0.0.0", PORT, udp=udp)


@pytest.fixture
def echo() -> Iterator[tuple[str, int]]:
    """An echo server in the root namespace, on all addresses (namespaces reach it too)."""
    process, port = start_echo(subprocess.Popen, "0.0.0.0", 0)
    try:
        yield "127.0.0.1", port
    finally:
        process.kill()
        process.wait(timeout=10)


def round_trip(address: tuple[str, int], payload: bytes = b"ping", timeout: float = 5.0) -> bytes:
    with socket.create_connection(address, timeout=timeout) as conn:
        conn.sendall(payload)
        return receive(conn, len(payload))


def receive(conn: socket.socket, size: int) -> bytes:
    """Exactly ``size`` bytes, or fewer if the other side closed first."""
    chunks = bytearray()
    while len(chunks) < size and (chunk := conn.recv(size - len(chunks))):
        chunks += chunk
    return bytes(chunks)


def blocked(address: tuple[str, int]) -> bool:
    """True if a connection attempt times out, as it does when packets are dropped."""
    try:
        with socket.create_connection(address, timeout=FAST):
            return False
    except TimeoutError:
        return True


# --- DelayProxy ------------------------------------------------------------------------------


def proxy_at(proxy: DelayProxy) -> tuple[str, int]:
    return proxy.host, proxy.port


def test_proxy_adds_the_delay_each_way(echo: tuple[str, int]) -> None:
    with DelayProxy(echo, DELAY) as proxy:
        conn = socket.create_connection(proxy_at(proxy), timeout=5.0)
        with conn:
            for _ in range(3):  # the first round trip includes the proxy's upstream connect
                start = time.monotonic()
                conn.sendall(b"ping")
                assert receive(conn, 4) == b"ping"
                assert 2 * DELAY <= time.monotonic() - start < 2.0


def test_proxy_delays_without_cutting_bandwidth(echo: tuple[str, int]) -> None:
    payload = os.urandom(1 << 20)
    with DelayProxy(echo, DELAY) as proxy:
        conn = socket.create_connection(proxy_at(proxy), timeout=5.0)
        with conn:
            start = time.monotonic()
            sender = threading.Thread(target=conn.sendall, args=(payload,), daemon=True)
            sender.start()
            assert receive(conn, len(payload)) == payload
            sender.join(5.0)
            # one chunk per delay would be >= 16 x 64 KiB chunks x 0.2 s each way
            assert time.monotonic() - start < 2.0
            start = time.monotonic()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for i in range(100):  # small writes back to back, as gRPC frames go
                conn.sendall(b"%03d" % i)
            assert receive(conn, 300) == b"".join(b"%03d" % i for i in range(100))
            assert 2 * DELAY <= time.monotonic() - start < 2.0


def test_proxy_serves_connections_concurrently(echo: tuple[str, int]) -> None:
    with DelayProxy(echo, DELAY) as proxy:
        results: list[bytes] = []
        start = time.monotonic()
        threads = [
            threading.Thread(
                target=lambda i=i: results.append(round_trip(proxy_at(proxy), b"%d" % i))
            )
            for i in range(20)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10.0)
        assert sorted(results) == sorted(b"%d" % i for i in range(20))
        assert time.monotonic() - start < 2.0  # one after the other would take 8 s


def test_proxy_passes_on_a_close_after_the_data(echo: tuple[str, int]) -> None:
    with DelayProxy(echo, DELAY) as proxy, socket.create_connection(proxy_at(proxy)) as conn:
        conn.settimeout(5.0)
        conn.sendall(b"last words")
        start = time.monotonic()
        conn.shutdown(socket.SHUT_WR)  # the echo server closes when it reads the end
        assert receive(conn, 100) == b"last words"
        assert conn.recv(100) == b""
        assert 2 * DELAY <= time.monotonic() - start < 2.0


def test_proxy_stop_closes_everything(echo: tuple[str, int]) -> None:
    proxy = DelayProxy(echo, DELAY)
    with socket.create_connection(proxy_at(proxy), timeout=5.0) as conn:
        conn.sendall(b"ping")
        assert receive(conn, 4) == b"ping"
        proxy.stop()
        with contextlib.suppress(ConnectionResetError):  # either way, it is closed
            assert conn.recv(100) == b""
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(proxy_at(proxy), timeout=5.0)
    assert not [t for t in threading.enumerate() if t.name == f"DelayProxy-{proxy.port}"]


# --- namespaces and faults -------------------------------------------------------------------


def test_namespaces_reach_the_host_and_are_reached(echo: tuple[str, int]) -> None:
    needs_namespaces()
    with network(2) as net:
        assert len({ns.name for ns in net}) == len({ns.address for ns in net}) == 2
        for ns in net:
            start_ns_echo(ns)
            assert round_trip((ns.address, PORT)) == b"ping"
            done = ns.run([sys.executable, "-c", CLIENT, ns.host_address, str(echo[1])])
            assert (done.returncode, done.stdout) == (0, "hello\n"), done.stderr
            done = ns.run([sys.executable, "-c", CLIENT, "127.0.0.1", str(echo[1])])
            assert done.returncode == 1, "the host's loopback is not the namespace's"


def test_partition_drops_everything_until_healed() -> None:
    needs_namespaces()
    with network(2) as net:
        cut, other = net
        for ns in net:
            start_ns_echo(ns)
        with socket.create_connection((cut.address, PORT), timeout=FAST) as conn:
            assert round_trip((cut.address, PORT)) == b"ping"
            cut.partition()
            conn.sendall(b"during")
            assert blocked((cut.address, PORT))
            conn.settimeout(0.2)
            with pytest.raises(TimeoutError):
                conn.recv(100)
            local = cut.run([sys.executable, "-c", CLIENT, "127.0.0.1", str(PORT)])
            assert local.returncode == 0, f"loopback must work in a partition: {local.stdout}"
            assert round_trip((other.address, PORT)) == b"ping", "only `cut` is partitioned"
            cut.heal()
            assert round_trip((cut.address, PORT)) == b"ping"
            conn.settimeout(10.0)  # TCP retransmits what the partition dropped
            assert receive(conn, 6) == b"during"


def test_heal_keeps_loss_and_clear_faults_removes_it() -> None:
    needs_namespaces()
    with network(1) as (ns,):
        start_ns_echo(ns)
        ns.drop_random(100)
        ns.partition()
        ns.heal()
        assert blocked((ns.address, PORT)), ns.ruleset()
        ns.clear_faults()
        assert round_trip((ns.address, PORT)) == b"ping"
        with pytest.raises(ValueError, match="0..100"):
            ns.drop_random(101)


@pytest.mark.parametrize("percent", [0, 50])
def test_random_loss_drops_that_share_each_way(percent: int) -> None:
    needs_namespaces()
    probes = 200
    with network(1) as (ns,), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        start_ns_echo(ns, udp=True)
        ns.drop_random(percent)
        udp.connect((ns.address, PORT))
        for i in range(probes):
            udp.send(b"probe %d" % i)
        echoed = len(replies(udp, lambda data: data.startswith(b"probe"), probes))
        ns.clear_faults()
        arrived = count_at_server(udp)
    if percent == 0:
        assert (arrived, echoed) == (probes, probes)
    else:
        assert 0.25 <= 1 - arrived / probes <= 0.75, f"inbound: {arrived} of {probes} arrived"
        assert 0.25 <= 1 - echoed / arrived <= 0.75, f"outbound: {echoed} of {arrived} left"


def replies(udp: socket.socket, wanted: Callable[[bytes], bool], most: int) -> list[bytes]:
    """Datagrams that ``wanted`` accepts, until ``most`` or 0.5 s of silence (at most 10 s)."""
    udp.settimeout(0.5)
    got: list[bytes] = []
    deadline = time.monotonic() + 10.0
    while len(got) < most and time.monotonic() < deadline:
        try:
            data = udp.recv(2048)
        except TimeoutError:
            break
        if wanted(data):
            got.append(data)
    return got


def count_at_server(udp: socket.socket) -> int:
    """How many probes the echo server received; asked again if the answer is lost."""
    for _ in range(10):
        udp.send(b"count?")
        if answer := replies(udp, lambda data: not data.startswith(b"probe"), 1):
            return int(answer[0])
    raise AssertionError("the echo server did not say how many probes it received")


def test_everything_is_removed_even_when_the_test_fails() -> None:
    needs_namespaces()
    with pytest.raises(RuntimeError, match="boom"), network(2) as net:
        names = [ns.name for ns in net]
        veths = [ns.host_veth for ns in net]
        sleeper = net[0].popen(["sleep", "60"])
        net[1].partition()
        raise RuntimeError("boom")
    assert sleeper.poll() is not None, "processes started in a namespace are stopped"
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
    assert not set(names) & set(listed.stdout.split())
    for veth in veths:
        shown = subprocess.run(["ip", "link", "show", veth], capture_output=True, timeout=10)
        assert shown.returncode != 0, f"{veth} is left behind"
