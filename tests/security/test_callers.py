"""Who may call what at a hub's one address: a real TLS hub on 127.0.0.1, called with each
kind of certificate (a node's, a user's, the guest's, and one forged with the guest key)."""

from __future__ import annotations

import datetime
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pollinate.app import app_hash
from pollinate.hub.access import Role
from pollinate.hub.archives import pack_app
from pollinate.security import NodeCredentials, UserCredentials
from pollinate.security.guest import ENROL_SERVER_NAME, GUEST_CERT_PEM, GUEST_KEY_PEM
from pollinate.transport.client import ControlClient, FleetClient, HubRefused, enrol, login
from pollinate.transport.ports import serve
from tests.deployment.apps import write_tiny_app
from tests.transport.test_tls import RunningHub, start_hub

FLEET, CONTROL = "/pollinate.v1.Fleet/", "/pollinate.v1.Control/"


@pytest.fixture
def running(tmp_path: Path) -> Iterator[RunningHub]:
    hub = start_hub(tmp_path / "hub")
    yield hub
    hub.servers.stop(0)
    hub.hub.close()


def call(
    running: RunningHub, key: bytes, cert: bytes, method: str, *, root: bytes, guest: bool = False
) -> grpc.RpcError:
    """The error the hub answers ``method`` (an empty request) with, called with ``cert`` and
    trusting ``root`` (as a guest: the enrolment certificate); fails if the hub answers."""
    options = [("grpc.ssl_target_name_override", ENROL_SERVER_NAME)] if guest else []
    tls = grpc.ssl_channel_credentials(root, key, cert)
    with (
        grpc.secure_channel(running.fleet, tls, options) as channel,
        pytest.raises(grpc.RpcError) as refused,
    ):
        channel.stream_unary(method)(iter([b""]), timeout=30)
    return refused.value


def test_the_guest_certificate_makes_only_the_newcomer_calls(running: RunningHub) -> None:
    node = enrol(running.enrol, running.token())
    guest = (GUEST_KEY_PEM, GUEST_CERT_PEM)
    heartbeat = call(running, *guest, FLEET + "Heartbeat", root=node.enrol_pem, guest=True)
    assert heartbeat.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "enrol first" in str(heartbeat.details())
    listing = call(running, *guest, CONTROL + "ListRuns", root=node.enrol_pem, guest=True)
    assert listing.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "log in first" in str(listing.details())


def test_a_certificate_forged_with_the_guest_key_fails_the_handshake(running: RunningHub) -> None:
    guest_key = serialization.load_pem_private_key(GUEST_KEY_PEM, None)
    assert isinstance(guest_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    forged = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "node:1")]))
        .issuer_name(x509.load_pem_x509_certificate(GUEST_CERT_PEM).subject)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
        .sign(guest_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    credentials = NodeCredentials(
        key_pem,
        forged.public_bytes(serialization.Encoding.PEM),
        running.hub.credentials.ca.ca_pem,  # type: ignore[union-attr]
    )
    client = FleetClient(running.fleet, credentials)
    try:
        with pytest.raises(Exception, match="(?i)unavailable|handshake|failed to connect"):
            client.heartbeat("app", {})
    finally:
        client.close()
    assert running.hub.fleet.alive() == []


def test_nodes_and_users_each_call_only_their_own_api(running: RunningHub) -> None:
    node = enrol(running.enrol, running.token())
    ca = node.ca_pem
    as_node = call(running, node.key_pem, node.cert_pem, CONTROL + "ListRuns", root=ca)
    assert as_node.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "cannot make control calls" in str(as_node.details())
    admin = running.admin
    as_user = call(running, admin.key_pem, admin.cert_pem, FLEET + "Heartbeat", root=ca)
    assert as_user.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "cannot call the fleet API" in str(as_user.details())


def test_a_user_logs_in_and_is_cut_off_when_revoked(running: RunningHub) -> None:
    token = running.hub.add_user("alice", Role.VIEWER, ["a"])
    name, credentials = login(running.fleet, token)
    assert name == "alice"
    alice = ControlClient(running.fleet, credentials)
    try:
        assert alice.who_am_i().projects == frozenset({"a"})
        with pytest.raises(HubRefused, match="needs role admin"):
            alice.create_token(60)
        with pytest.raises(HubRefused, match="already used"):
            login(running.fleet, token)  # one-time
        running.hub.revoke_user("alice")
        with pytest.raises(HubRefused, match="alice was revoked"):
            alice.list_runs()
        with pytest.raises(HubRefused, match="renewal|revoked"):
            alice.renew_user(credentials)
    finally:
        alice.close()


def test_a_revoked_users_log_stream_ends(running: RunningHub, tmp_path: Path) -> None:
    app = write_tiny_app(tmp_path / "app", **{"num-rounds": 1})
    run_id = running.hub.submit_run(pack_app(app), app_hash(app), {}, 1, 0)  # waits for nodes
    token = running.hub.add_user("bob", Role.MEMBER, ["default"])
    _, credentials = login(running.fleet, token)
    bob = ControlClient(running.fleet, credentials)
    ended = threading.Event()
    outcome: list[BaseException] = []

    def follow() -> None:
        try:
            list(bob.follow_log(run_id, follow=True))
        except BaseException as exc:  # what ended the stream
            outcome.append(exc)
        ended.set()

    threading.Thread(target=follow, daemon=True).start()
    assert not ended.wait(1.0)  # the run waits for nodes: the stream stays open
    running.hub.revoke_user("bob")
    assert ended.wait(30), "the revoked user's stream is still open"
    assert "bob was revoked" in str(outcome[0])
    bob.close()
    running.hub.stop_run(run_id)


def test_a_login_saves_owner_only_credentials(running: RunningHub, tmp_path: Path) -> None:
    token = running.hub.add_user("carol", Role.MEMBER, ["a"])
    _, credentials = login(running.fleet, token)
    credentials.save(tmp_path / "carol")
    assert {f.name: f.stat().st_mode & 0o777 for f in (tmp_path / "carol").iterdir()} == {
        "user.key": 0o600,
        "user.pem": 0o600,
        "ca.pem": 0o600,
    }
    assert UserCredentials.load(tmp_path / "carol") == credentials


def test_a_dashboard_link_opens_the_dashboard_as_its_caller(tmp_path: Path) -> None:
    running = start_hub(tmp_path / "hub")
    running.servers.stop(0)  # serve again, with a dashboard whose links name their caller
    servers = serve(running.hub, "127.0.0.1:0", dashboard_link=lambda c: f"link as {c.name}")
    try:
        address = f"127.0.0.1:{servers.port}"
        _, credentials = login(address, running.hub.add_user("dora", Role.VIEWER, ["a"]))
        dora = ControlClient(address, credentials)
        assert dora.dashboard_link() == "link as dora"
        dora.close()
    finally:
        servers.stop(0)
        running.hub.close()
