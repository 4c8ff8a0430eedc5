"""Enrolment at the hub: the CSR is checked before the join token is spent, a token is spent
once however many redeem it at once, and each address may try only so often.

Real Hub objects with real credentials (CA, SQLite token store) in tmp_path, without gRPC:
the transport only passes the token, the CSR and the peer's address. Time for the rate limit
is a number the test moves.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from pollinate.errors import PollinateError
from pollinate.hub.credentials import HubCredentials
from pollinate.hub.fleet import Refused
from pollinate.hub.hub import LOG_EVERY_REFUSED, Hub, TooManyAttempts
from pollinate.hub.rate_limit import RateLimiter
from pollinate.security import SecurityError, make_key_and_csr, node_id_from_certificate

TIMEOUT = 60.0
PEER = "ipv4:192.0.2.7:53422"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def hub(tmp_path: Path, clock: Clock) -> Iterator[Hub]:
    data_dir = tmp_path / "hub"
    data_dir.mkdir()
    credentials = HubCredentials.load_or_create(data_dir, ["localhost"], ["127.0.0.1"], 3600)
    hub = Hub(data_dir, credentials=credentials, enrol_limit=RateLimiter(5, 1.0, clock=clock))
    yield hub
    hub.close()
    hub.state.close()


def token(hub: Hub) -> str:
    return hub.create_token(600)[0]


def wrong(token: str) -> str:
    """The token with another secret: well formed, the right pin, never issued."""
    prefix, token_id, _, pin = token.split(".")
    return f"{prefix}.{token_id}.{'A' * 43}.{pin}"


def csr() -> bytes:
    return make_key_and_csr()[1]


def tampered_csr() -> bytes:
    pem = csr()
    der = bytearray(x509.load_pem_x509_csr(pem).public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01  # the signature's last byte
    return x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)


def weak_csr() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "weak")])
    request = x509.CertificateSigningRequestBuilder().subject_name(subject)
    return request.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


# --- a malformed CSR does not burn the token ------------------------------------------------


@pytest.mark.parametrize(
    ("bad_csr", "reason"),
    [
        (lambda: b"", "not a readable PEM CSR"),
        (lambda: b"-----BEGIN CERTIFICATE REQUEST-----\ngarbage\n", "not a readable PEM CSR"),
        (tampered_csr, "signature does not verify"),
        (weak_csr, "too weak"),
    ],
    ids=["empty", "garbage", "forged", "weak key"],
)
def test_a_csr_the_hub_refuses_leaves_the_token_unspent(
    hub: Hub, bad_csr: object, reason: str
) -> None:
    issued = token(hub)
    with pytest.raises(SecurityError, match=reason):
        hub.enrol(issued, bad_csr(), PEER)  # type: ignore[operator]

    certificate, _, node_id = hub.enrol(issued, csr(), PEER)  # the same token, a good CSR
    assert node_id_from_certificate(certificate) == node_id


def test_a_refused_csr_takes_no_node_id(hub: Hub) -> None:
    issued = token(hub)
    with pytest.raises(SecurityError):
        hub.enrol(issued, b"garbage", PEER)
    first = hub.enrol(issued, csr(), PEER)[2]
    second = hub.enrol(token(hub), csr(), PEER)[2]
    assert second == first + 1


def test_a_malformed_token_is_refused_before_the_csr_is_read(hub: Hub) -> None:
    with pytest.raises(SecurityError, match="malformed join token"):
        hub.enrol("pln1.nope", b"garbage", PEER)


def test_two_enrolments_with_one_token_at_once_one_wins(tmp_path: Path) -> None:
    data_dir = tmp_path / "hub"
    data_dir.mkdir()
    credentials = HubCredentials.load_or_create(data_dir, ["localhost"], ["127.0.0.1"], 3600)
    hub = Hub(data_dir, credentials=credentials)
    try:
        issued = token(hub)
        requests = [csr() for _ in range(8)]
        start = threading.Barrier(len(requests), timeout=TIMEOUT)
        won: list[int] = []
        refused: list[str] = []

        def enrol(request: bytes) -> None:
            start.wait()
            try:
                won.append(hub.enrol(issued, request, PEER)[2])
            except PollinateError as exc:
                refused.append(str(exc))

        threads = [threading.Thread(target=enrol, args=(r,)) for r in requests]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(TIMEOUT)

        assert len(won) == 1
        assert len(refused) == 7 and all("already used" in r for r in refused)
    finally:
        hub.close()
        hub.state.close()


# --- enrolment attempts are rate-limited per source address -------------------------------


def test_past_its_burst_an_address_is_refused_and_a_valid_token_is_not_spent(hub: Hub) -> None:
    issued = token(hub)
    for _ in range(5):
        with pytest.raises(SecurityError, match="unknown join token"):
            hub.enrol(wrong(issued), csr(), PEER)

    with pytest.raises(TooManyAttempts, match="too many enrolment attempts from 192.0.2.7") as e:
        hub.enrol(issued, csr(), PEER)
    assert isinstance(e.value, Refused)
    assert "nothing was spent; try again in 1 s" in str(e.value)

    assert hub.enrol(issued, csr(), "ipv4:198.51.100.1:1")[2] > 0  # another address: not held


def test_an_address_may_enrol_again_once_it_earned_an_attempt_back(hub: Hub, clock: Clock) -> None:
    issued = token(hub)
    for _ in range(5):
        with pytest.raises(SecurityError):
            hub.enrol(wrong(issued), csr(), PEER)
    with pytest.raises(TooManyAttempts):
        hub.enrol(issued, csr(), PEER)

    clock.now += 1.0  # one attempt a second
    certificate, _, node_id = hub.enrol(issued, csr(), "ipv4:192.0.2.7:60001")  # other port
    assert node_id_from_certificate(certificate) == node_id


def test_refusals_are_logged_with_the_source_address_and_a_flood_in_few_lines(
    hub: Hub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pollinate.hub")
    issued = token(hub)
    attempts = 5 + 2 * LOG_EVERY_REFUSED
    for _ in range(attempts):
        with pytest.raises(PollinateError):  # SecurityError, then TooManyAttempts
            hub.enrol(wrong(issued), csr(), PEER)

    lines = [r.getMessage() for r in caplog.records]
    assert all("192.0.2.7" in line and "53422" not in line for line in lines)
    wrong_token = [line for line in lines if "unknown join token" in line]
    too_many = [line for line in lines if "too many attempts" in line]
    assert len(wrong_token) == 5
    assert len(too_many) == 3  # the first refusal, then every LOG_EVERY_REFUSED-th
    assert f"{2 * LOG_EVERY_REFUSED} refused in a row" in too_many[-1]
    assert issued.split(".")[2] not in caplog.text  # a token's secret is never logged


def test_an_enrolment_is_logged_with_its_source(hub: Hub, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pollinate.hub")
    node_id = hub.enrol(token(hub), csr(), PEER)[2]
    assert f"node {node_id} enrolled from 192.0.2.7" in caplog.text


def test_an_insecure_hub_refuses_enrolment_whatever_the_source(tmp_path: Path) -> None:
    hub = Hub(tmp_path / "hub")
    try:
        with pytest.raises(Refused, match="--insecure"):
            hub.enrol("pln1.x", b"", PEER)
    finally:
        hub.close()
        hub.state.close()


def test_the_default_limit_lets_a_fleet_of_100_behind_one_address_enrol_at_once(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "hub"
    data_dir.mkdir()
    credentials = HubCredentials.load_or_create(data_dir, ["localhost"], ["127.0.0.1"], 3600)
    hub = Hub(data_dir, credentials=credentials)
    try:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "n")])
        request = x509.CertificateSigningRequestBuilder().subject_name(subject)
        one_csr = request.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
        ids = {
            hub.enrol(token(hub), one_csr, f"ipv4:203.0.113.9:{40000 + i}")[2] for i in range(100)
        }
        assert len(ids) == 100
    finally:
        hub.close()
        hub.state.close()
