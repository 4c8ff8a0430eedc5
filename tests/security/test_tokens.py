"""Join tokens: one-time, expiring, stored as hashes, and pinning the hub's CA."""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pollinate.security import (
    CertificateAuthority,
    JoinToken,
    SecurityError,
    TokenStore,
    ca_matches_pin,
    parse_token,
)

FINGERPRINT = "0123456789abcdef" * 4


@pytest.fixture
def connection() -> Iterator[sqlite3.Connection]:
    connection = sqlite3.connect(":memory:")
    yield connection
    connection.close()


@pytest.fixture
def store(connection: sqlite3.Connection) -> TokenStore:
    return TokenStore(connection)


def test_a_token_carries_an_id_a_secret_and_the_ca_pin(store: TokenStore) -> None:
    token = store.create(ca_fingerprint=FINGERPRINT)
    assert re.fullmatch(r"pln1\.[\w-]{12}\.[\w-]{43}\.[0-9a-f]{32}", token)
    parsed = parse_token(f"  {token}\n")
    assert parsed.ca_pin == FINGERPRINT[:32]
    assert token == f"pln1.{parsed.id}.{parsed.secret}.{parsed.ca_pin}"


def test_tokens_are_unique(store: TokenStore) -> None:
    tokens = [parse_token(store.create(ca_fingerprint=FINGERPRINT)) for _ in range(20)]
    assert len({t.id for t in tokens}) == len({t.secret for t in tokens}) == 20


def test_a_token_is_redeemed_once_then_refused(store: TokenStore) -> None:
    token = store.create(ttl_seconds=60, ca_fingerprint=FINGERPRINT, now=1000.0)
    store.redeem(token, now=1010.0)
    with pytest.raises(
        SecurityError, match=r"already used \(at 1970-01-01T00:16:50Z\).*pollinate token create"
    ):
        store.redeem(token, now=1011.0)


def test_an_expired_token_is_refused(store: TokenStore) -> None:
    token = store.create(ttl_seconds=60, ca_fingerprint=FINGERPRINT, now=1000.0)
    with pytest.raises(
        SecurityError, match=r"expired at 1970-01-01T00:17:40Z; create a new one with `pollinate"
    ):
        store.redeem(token, now=1060.0)
    store.redeem(token, now=1059.0)  # refusing it did not spend it; just in time it works


def test_an_unknown_token_is_refused(store: TokenStore) -> None:
    foreign = TokenStore(sqlite3.connect(":memory:")).create(ca_fingerprint=FINGERPRINT)
    with pytest.raises(SecurityError, match="unknown join token"):
        store.redeem(foreign)


def test_a_wrong_secret_is_unknown_and_spends_nothing(store: TokenStore) -> None:
    token = parse_token(store.create(ca_fingerprint=FINGERPRINT))
    guess = f"pln1.{token.id}.{'A' * 43}.{token.ca_pin}"
    with pytest.raises(SecurityError, match="unknown join token"):
        store.redeem(guess)
    store.redeem(f"pln1.{token.id}.{token.secret}.{token.ca_pin}")


@pytest.mark.parametrize(
    ("mangle", "reason"),
    [
        (lambda t: "", "does not start with pln1"),
        (lambda t: t.replace("pln1", "pln2"), "does not start with pln1"),
        (lambda t: t.rsplit(".", 1)[0], "3 dot-separated parts"),
        (lambda t: t + ".x", "5 dot-separated parts"),
        (lambda t: t[:-1], "CA pin part"),
        (lambda t: t[:-1] + "G", "CA pin part"),
        (lambda t: t.replace(".", ".!", 2).replace(".!", ".", 1), "secret part"),
    ],
)
def test_a_malformed_token_is_refused_without_echoing_it(
    store: TokenStore, mangle: Callable[[str], str], reason: str
) -> None:
    token = store.create(ca_fingerprint=FINGERPRINT)
    bad = mangle(token)
    with pytest.raises(SecurityError, match=f"malformed join token.*{reason}") as refusal:
        store.redeem(bad)
    assert parse_token(token).secret not in str(refusal.value)


@settings(max_examples=100, deadline=None)
@given(st.text() | st.from_regex(r"pln1\.[\w-]{12}\.[\w.-]{43}\.[0-9a-fA-F]{32}", fullmatch=True))
def test_parse_token_raises_only_security_error(text: str) -> None:
    try:
        token = parse_token(text)
    except SecurityError:
        return
    assert text.strip() == f"pln1.{token.id}.{token.secret}.{token.ca_pin}"


def test_the_secret_is_never_stored(store: TokenStore, connection: sqlite3.Connection) -> None:
    secret = parse_token(store.create(ca_fingerprint=FINGERPRINT)).secret
    rows = connection.execute("SELECT * FROM join_tokens").fetchall()
    assert len(rows) == 1
    assert not any(secret in str(value) for value in rows[0])
    dump = "\n".join(connection.iterdump())
    assert secret not in dump


def test_a_token_is_redeemed_at_most_once_even_from_eight_threads(tmp_path: Path) -> None:
    database = tmp_path / "hub.db"
    token = TokenStore(sqlite3.connect(database)).create(ca_fingerprint=FINGERPRINT)
    start = threading.Barrier(8)
    outcomes: list[str] = []

    def redeem() -> None:
        store = TokenStore(sqlite3.connect(database, timeout=10))
        start.wait()
        try:
            store.redeem(token)
            outcomes.append("redeemed")
        except SecurityError as error:
            outcomes.append(str(error))

    threads = [threading.Thread(target=redeem) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count("redeemed") == 1
    assert all("already used" in o for o in outcomes if o != "redeemed")


def test_one_store_on_a_shared_connection_redeems_at_most_once() -> None:
    store = TokenStore(sqlite3.connect(":memory:", check_same_thread=False))
    token = store.create(ca_fingerprint=FINGERPRINT)
    start = threading.Barrier(8)
    redeemed: list[bool] = []

    def redeem() -> None:
        start.wait()
        try:
            store.redeem(token)
            redeemed.append(True)
        except SecurityError:
            redeemed.append(False)

    threads = [threading.Thread(target=redeem) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(redeemed) == [False] * 7 + [True]


def test_create_checks_its_arguments(store: TokenStore) -> None:
    with pytest.raises(ValueError, match="not a SHA-256 fingerprint"):
        store.create(ca_fingerprint="abc")
    with pytest.raises(ValueError, match="ttl_seconds must be a finite number > 0, got 0"):
        store.create(ttl_seconds=0, ca_fingerprint=FINGERPRINT)
    with pytest.raises(ValueError, match="ttl_seconds must be a finite number > 0, got inf"):
        store.create(ttl_seconds=float("inf"), ca_fingerprint=FINGERPRINT)


def test_a_join_token_repr_hides_the_secret(store: TokenStore) -> None:
    token = parse_token(store.create(ca_fingerprint=FINGERPRINT))
    assert isinstance(token, JoinToken)
    assert token.secret not in repr(token) and token.id in repr(token)


def test_the_pin_matches_the_right_ca_only() -> None:
    ca, other = CertificateAuthority.create(), CertificateAuthority.create()
    store = TokenStore(sqlite3.connect(":memory:"))
    pin = parse_token(store.create(ca_fingerprint=ca.fingerprint)).ca_pin
    assert ca_matches_pin(ca.ca_pem, pin)
    assert ca_matches_pin(ca.ca_pem, ca.fingerprint)  # a whole fingerprint is a pin too
    assert not ca_matches_pin(other.ca_pem, pin)
    assert not ca_matches_pin(b"garbage", pin)
    assert not ca_matches_pin(ca.ca_pem, pin[:8])  # too short to pin anything
    assert not ca_matches_pin(ca.ca_pem, "")
