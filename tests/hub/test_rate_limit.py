"""The rate limit per source: a burst, then a steady rate; one host is one source; memory is
bounded. Time is a number the test moves (no sleeps, no timing asserts)."""

from __future__ import annotations

import pytest

from pollinate.hub.rate_limit import MAX_SOURCE_CHARS, RateLimiter, source_of


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limiter(clock: Clock, burst: int = 3, per_second: float = 2.0, **kw: int) -> RateLimiter:
    return RateLimiter(burst, per_second, clock=clock, **kw)


def test_a_source_may_make_its_burst_at_once_and_no_more() -> None:
    limit = limiter(Clock(), burst=3)
    assert [limit.allow("a") for _ in range(5)] == [True, True, True, False, False]
    assert limit.refused_in_a_row("a") == 2


def test_a_source_earns_attempts_back_at_its_rate_up_to_its_burst() -> None:
    clock = Clock()
    limit = limiter(clock, burst=3, per_second=2.0)
    for _ in range(3):
        limit.allow("a")
    assert limit.retry_after("a") == pytest.approx(0.5)
    clock.now += 0.25
    assert limit.allow("a") is False  # half an attempt earned: not enough
    clock.now += 0.25
    assert limit.allow("a") is True and limit.refused_in_a_row("a") == 0
    clock.now += 3600  # a long rest refills the bucket, never past the burst
    assert [limit.allow("a") for _ in range(4)] == [True, True, True, False]


def test_sources_are_limited_apart() -> None:
    limit = limiter(Clock(), burst=1)
    assert limit.allow("a") and not limit.allow("a")
    assert limit.allow("b")  # another address is not held back by a's attempts
    assert limit.retry_after("c") == 0.0


def test_a_source_whose_bucket_is_full_again_is_forgotten() -> None:
    clock = Clock()
    limit = limiter(clock, burst=2, per_second=1.0)
    limit.allow("a")
    limit.allow("b")
    assert limit.tracked() == 2
    clock.now += 2.0  # both refilled: the same as never seen
    assert limit.tracked() == 0


def test_at_most_max_sources_are_tracked_and_the_longest_silent_goes_first() -> None:
    limit = limiter(Clock(), burst=1, max_sources=3)
    for source in ["a", "b", "c"]:
        assert limit.allow(source)
    assert limit.allow("a") is False  # a was heard from again: now b is the longest silent
    assert limit.allow("d")
    assert limit.tracked() == 3
    assert limit.allow("b")  # forgotten, so it starts afresh
    assert limit.allow("a") is False  # still tracked, still refused


def test_ten_thousand_addresses_cost_a_bounded_table() -> None:
    limit = limiter(Clock(), burst=1, max_sources=100)
    for i in range(10_000):
        limit.allow(f"10.0.{i // 256}.{i % 256}")
    assert limit.tracked() == 100


@pytest.mark.parametrize(
    ("peer", "source"),
    [
        ("ipv4:127.0.0.1:53422", "127.0.0.1"),
        ("ipv6:[2001:db8::7]:53422", "2001:db8::/64"),
        ("ipv6:%5B2001:db8::7%5D:53422", "2001:db8::/64"),  # as some gRPC versions write it
        ("ipv6:[::ffff:10.1.2.3]:9", "10.1.2.3"),  # an IPv4 client of a port bound to [::]
        ("unix:/run/hub.sock", "unix:/run/hub.sock"),
        ("ipv4:not-an-address:1", "ipv4:not-an-address:1"),
        ("\x1b[31mred\x1b[0m", "?[31mred?[0m"),
    ],
)
def test_a_peer_address_names_its_host_as_the_source(peer: str, source: str) -> None:
    assert source_of(peer) == source


def test_one_host_on_many_ports_is_one_source() -> None:
    limit = limiter(Clock(), burst=2)
    allowed = [limit.allow(source_of(f"ipv4:10.0.0.1:{port}")) for port in range(50000, 50004)]
    assert allowed == [True, True, False, False]


def test_one_ipv6_subscriber_network_is_one_source() -> None:
    assert source_of("ipv6:[2001:db8:0:1::5]:1") == source_of("ipv6:[2001:db8:0:1:ffff::9]:2")
    assert source_of("ipv6:[2001:db8:0:1::5]:1") != source_of("ipv6:[2001:db8:0:2::5]:1")


def test_a_long_source_is_cut() -> None:
    assert len(source_of("unix:" + "x" * 10_000)) == MAX_SOURCE_CHARS


@pytest.mark.parametrize(
    ("burst", "per_second"), [(0, 1.0), (5, 0.0), (5, -1.0), (5, float("inf")), (5, float("nan"))]
)
def test_a_limit_that_would_refuse_everything_or_nothing_is_refused(
    burst: int, per_second: float
) -> None:
    with pytest.raises(ValueError, match="must be a finite number > 0, got .*\nHint: RateLimiter"):
        RateLimiter(burst, per_second)
