"""Enrolment by token, then mutual TLS: a real hub on real sockets with real certificates.

Each refusal is asserted with its message, on the node's side (the error it raises) and,
where the TLS handshake itself refuses, through the hub's diagnosis of the certificate.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pollinate.cli.deploy import _node_credentials
from pollinate.hub.credentials import HubCredentials
from pollinate.hub.hub import Hub
from pollinate.security import (
    CertificateAuthority,
    NodeCredentials,
    SecurityError,
    UserCredentials,
    make_key_and_csr,
    node_id_from_certificate,
)
from pollinate.transport.client import (
    FleetClient,
    HubRefused,
    HubUnavailable,
    diagnose,
    enrol,
)
from pollinate.transport.ports import HubPorts, serve


@dataclass
class RunningHub:
    hub: Hub
    servers: HubPorts

    @property
    def fleet(self) -> str:
        return f"127.0.0.1:{self.servers.port}"

    @property
    def enrol(self) -> str:
        return f"127.0.0.1:{self.servers.port}"

    @property
    def admin(self) -> UserCredentials:
        """The admin credential the hub wrote into its data dir."""
        credentials = UserCredentials.load(self.hub.state.data_dir / "admin")
        assert credentials is not None
        return credentials

    def token(self, ttl: float = 60.0) -> str:
        return self.hub.create_token(ttl)[0]


def start_hub(data_dir: Path, cert_lifetime: int = 3600) -> RunningHub:
    credentials = HubCredentials.load_or_create(
        data_dir, ["localhost"], ["127.0.0.1"], cert_lifetime
    )
    hub = Hub(data_dir, credentials=credentials, heartbeat_timeout=30)
    return RunningHub(hub, serve(hub, "127.0.0.1:0"))


@pytest.fixture
def running(tmp_path: Path) -> Iterator[RunningHub]:
    hub = start_hub(tmp_path / "hub")
    yield hub
    hub.servers.stop(0)
    hub.hub.close()


def test_a_node_enrols_by_token_then_speaks_mutual_tls(running: RunningHub) -> None:
    credentials = enrol(running.enrol, running.token())
    node_id = node_id_from_certificate(credentials.cert_pem)
    client = FleetClient(running.fleet, credentials)
    client.heartbeat("app", {})
    assert client.node_id == node_id  # the id is the certificate's, not a claim
    assert running.hub.fleet.alive() == [node_id]
    client.close()


def test_each_enrolment_gets_its_own_node_id(running: RunningHub) -> None:
    ids = {
        node_id_from_certificate(enrol(running.enrol, running.token()).cert_pem) for _ in range(3)
    }
    assert len(ids) == 3


def test_a_spent_token_is_refused(running: RunningHub) -> None:
    token = running.token()
    enrol(running.enrol, token)
    with pytest.raises(HubRefused, match="this join token was already used"):
        enrol(running.enrol, token)


def test_an_expired_token_is_refused(running: RunningHub) -> None:
    token = running.token(ttl=0.2)
    time.sleep(0.5)
    with pytest.raises(HubRefused, match="expired"):
        enrol(running.enrol, token)


def test_a_token_from_another_hub_fails_the_pin_check(running: RunningHub, tmp_path: Path) -> None:
    other = start_hub(tmp_path / "other")
    try:
        with pytest.raises(SecurityError, match="does not match the join token's pin"):
            enrol(running.enrol, other.token())
    finally:
        other.servers.stop(0)
        other.hub.close()


def test_a_node_without_a_certificate_cannot_reach_the_fleet(running: RunningHub) -> None:
    enrolled = enrol(running.enrol, running.token())
    no_cert = FleetClient(running.fleet, None)  # plain text against a TLS port
    with pytest.raises(HubUnavailable):
        no_cert.heartbeat("app", {})
    stranger = NodeCredentials(b"", b"", enrolled.ca_pem)
    with pytest.raises(HubUnavailable):
        FleetClient(running.fleet, _with_fresh_key(stranger, None)).heartbeat("app", {})


def test_a_certificate_from_another_ca_is_refused_with_the_reason(running: RunningHub) -> None:
    enrolled = enrol(running.enrol, running.token())
    forged = _with_fresh_key(enrolled, CertificateAuthority.create())
    with pytest.raises(HubUnavailable):
        FleetClient(running.fleet, forged).heartbeat("app", {})
    reason = diagnose(running.enrol, forged)
    assert reason is not None and "issued by another CA" in reason
    assert diagnose(running.enrol, enrolled) is None


def test_an_expired_certificate_is_refused_with_the_reason(tmp_path: Path) -> None:
    hub = start_hub(tmp_path / "short", cert_lifetime=1)
    try:
        credentials = enrol(hub.enrol, hub.token())
        time.sleep(1.5)
        with pytest.raises(HubUnavailable):
            FleetClient(hub.fleet, credentials).heartbeat("app", {})
        reason = diagnose(hub.enrol, credentials)
        assert reason is not None and "expired" in reason
        with pytest.raises(SecurityError, match="certificate expired at .* Re-enrol"):
            credentials.check_not_expired()
    finally:
        hub.servers.stop(0)
        hub.hub.close()


def test_renewal_keeps_the_node_id_and_the_new_certificate_works(running: RunningHub) -> None:
    first = enrol(running.enrol, running.token())
    client = FleetClient(running.fleet, first)
    client.heartbeat("app", {})
    renewed = client.renew(first)
    assert renewed.cert_pem != first.cert_pem and renewed.key_pem != first.key_pem
    assert node_id_from_certificate(renewed.cert_pem) == client.node_id
    fresh = FleetClient(running.fleet, renewed)
    fresh.heartbeat("app", {})
    assert fresh.node_id == client.node_id


def test_insecure_hubs_have_nothing_to_enrol_in(tmp_path: Path) -> None:
    hub = Hub(tmp_path / "insecure")
    try:
        with pytest.raises(Exception, match="--insecure"):
            hub.create_token(60)
    finally:
        hub.close()


def _with_fresh_key(
    credentials: NodeCredentials, ca: CertificateAuthority | None
) -> NodeCredentials:
    """Credentials whose certificate comes from ``ca`` (or is self-made when None)."""
    key_pem, csr_pem = make_key_and_csr()
    issuer = ca or CertificateAuthority.create()
    return NodeCredentials(
        key_pem, issuer.sign_node_csr(csr_pem, 99), credentials.ca_pem, credentials.enrol_pem
    )


def test_a_node_restarted_with_its_token_keeps_its_identity(
    running: RunningHub, tmp_path: Path
) -> None:
    token = running.token()  # one use
    first = _node_credentials(tmp_path / "node", token, running.fleet)
    again = _node_credentials(tmp_path / "node", token, running.fleet)  # a restarted container
    assert again == first  # the token was not spent twice (it could not be)
    other = _node_credentials(tmp_path / "other", running.token(), running.fleet)
    assert node_id_from_certificate(other.cert_pem) != node_id_from_certificate(first.cert_pem)
