"""A rate limit per source address: how the hub slows down strangers that guess join tokens.

Each source has a token bucket: it holds up to ``burst`` attempts and refills at ``per_second``;
an attempt takes one, and an attempt that finds the bucket empty is refused. A source whose
bucket is full again is the same as one never seen, so it is forgotten, and at most
``max_sources`` sources are tracked: past that, the one heard from longest ago is forgotten
first. Memory stays bounded whatever the number of addresses an attacker uses.

One host is one source: the port of a peer address is dropped, and an IPv6 address counts as
its /64 network, the block one subscriber is usually given (else a single host could try
2**64 addresses).

Invariant: the limiter decides before anything is read or spent, so a refused attempt costs
the hub a dictionary lookup and costs the caller nothing (a valid join token stays unspent).

>>> limiter = RateLimiter(burst=2, per_second=1.0, clock=lambda: 0.0)
>>> [limiter.allow("10.0.0.1") for _ in range(3)]
[True, True, False]
>>> limiter.allow("10.0.0.2")
True
>>> source_of("ipv4:127.0.0.1:53422")
'127.0.0.1'
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote

from pollinate.checks import integer, positive

__all__ = ["RateLimiter", "source_of"]

MAX_SOURCE_CHARS = 80
"""A source longer than this is cut: it names a peer in log lines and in the limiter."""


@dataclass
class _Bucket:
    attempts: float  # attempts left; refills at the limiter's rate up to its burst
    at: float  # when ``attempts`` was last brought up to date
    refused: int = 0  # refused in a row, for the log


class RateLimiter:
    """Token buckets by source; thread-safe.

    Args:
        burst: attempts a source may make at once (a bucket's size).
        per_second: attempts a source earns back each second.
        max_sources: sources tracked at most; the one heard from longest ago goes first.
        clock: seconds, monotonic (tests pass their own).
    """

    def __init__(
        self,
        burst: int,
        per_second: float,
        *,
        max_sources: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        hint = "RateLimiter(burst=200, per_second=2.0)"
        positive("burst", burst, hint=hint)
        self.burst, self.per_second = burst, positive("per_second", per_second, hint=hint)
        self.max_sources = integer(
            "max_sources", max_sources, minimum=1, hint="RateLimiter(200, 2.0, max_sources=10_000)"
        )
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._lock = threading.Lock()

    def allow(self, source: str) -> bool:
        """Take one attempt from ``source``'s bucket: True if it had one, False if refused."""
        with self._lock:
            now = self._clock()
            self._forget_full(now)
            bucket = self._buckets.pop(source, None) or _Bucket(float(self.burst), now)
            bucket.attempts = self._refilled(bucket, now)
            bucket.at = now
            allowed = bucket.attempts >= 1.0
            if allowed:
                bucket.attempts -= 1.0
                bucket.refused = 0
            else:
                bucket.refused += 1
            self._buckets[source] = bucket  # most recently heard from: last
            while len(self._buckets) > self.max_sources:
                self._buckets.popitem(last=False)
            return allowed

    def refused_in_a_row(self, source: str) -> int:
        """How many attempts of ``source`` were refused since its last allowed one."""
        with self._lock:
            bucket = self._buckets.get(source)
            return 0 if bucket is None else bucket.refused

    def retry_after(self, source: str) -> float:
        """Seconds until ``source`` may try again (0 if it may now)."""
        with self._lock:
            bucket = self._buckets.get(source)
            if bucket is None:
                return 0.0
            missing = 1.0 - self._refilled(bucket, self._clock())
            return max(0.0, missing / self.per_second)

    def tracked(self) -> int:
        """How many sources the limiter holds now (at most ``max_sources``)."""
        with self._lock:
            self._forget_full(self._clock())
            return len(self._buckets)

    def _refilled(self, bucket: _Bucket, now: float) -> float:
        earned = max(0.0, now - bucket.at) * self.per_second
        return min(float(self.burst), bucket.attempts + earned)

    def _forget_full(self, now: float) -> None:
        # oldest first: the first bucket heard from recently enough to be short ends the scan
        while self._buckets:
            source, bucket = next(iter(self._buckets.items()))
            if self._refilled(bucket, now) < self.burst:
                return
            del self._buckets[source]


def source_of(peer: str) -> str:
    """The host a gRPC peer address names, as one rate-limited source: ``ipv4:1.2.3.4:5678``
    is ``1.2.3.4``, ``ipv6:[2001:db8::1]:5678`` is ``2001:db8::/64`` (an IPv4-mapped one is its
    IPv4 address); anything else is kept, cut to ``MAX_SOURCE_CHARS``, unprintables as ``?``."""
    scheme, _, rest = peer.partition(":")
    host = unquote(rest).rpartition(":")[0].strip("[]")
    try:
        if scheme == "ipv4":
            return str(ipaddress.IPv4Address(host))
        if scheme == "ipv6":
            address = ipaddress.IPv6Address(host)
            if address.ipv4_mapped is not None:  # an IPv4 client of a port bound to [::]
                return str(address.ipv4_mapped)
            return str(ipaddress.IPv6Network(f"{host}/64", strict=False))
    except ValueError:
        pass
    return "".join(c if c.isprintable() else "?" for c in peer[:MAX_SOURCE_CHARS])
