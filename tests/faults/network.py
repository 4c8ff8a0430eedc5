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
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

TABLE = "pollinate_faults"
COMMAND_TIMEOUT = 10.0  # an `ip`/`nft` command; they take milliseconds
STOP_TIMEOUT = 5.0  # a process or thread asked to stop
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
