"""Enrolment against a real hub process on 127.0.0.1 with TLS: a stranger guessing join tokens
is slowed down and shows in the log by address, and neither a burst of wrong tokens nor a
malformed CSR costs an honest node its token.

The hub runs as `pollinate hub` does, with a small limit (``--enrol-burst 20 --enrol-rate 2``)
so the burst is short; every wait polls a condition with a generous bound, and nothing
asserts how long anything took.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pollinate.errors import PollinateError
from pollinate.security import NodeCredentials, UserCredentials, node_id_from_certificate
from pollinate.transport import client as client_module
from pollinate.transport.client import ControlClient, FleetClient, enrol
from tests.deployment.conftest import Process, free_ports, open_deployment, wait_for

BURST = 20
MAX_ATTEMPTS = 2000
"""Wrong tokens sent before the test gives up waiting for the limit: a hub with no limit
takes them all (before this change, 1,000 in 5.6 s)."""
TIMEOUT = 120.0


@dataclass
class TlsHub:
    process: Process
    address: str  # one address: enrolment, the fleet and control
    admin: Path  # the admin credential the hub wrote

    @property
    def enrol(self) -> str:
        return self.address

    @property
    def fleet(self) -> str:
        return self.address

    def token(self) -> str:
        control = ControlClient(self.address, UserCredentials.load(self.admin))
        try:
            return control.create_token(600)[0]
        finally:
            control.close()

    def log(self) -> str:
        """The hub's log, with rich's line wrapping undone."""
        return " ".join(self.process.stderr.split())


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[TlsHub]:
    (address,) = (f"127.0.0.1:{p}" for p in free_ports(1))
    with open_deployment(tmp_path / "deployment") as deployment:
        process = deployment.spawn(
            "hub",
            "hub",
            "--data-dir",
            str(deployment.directory / "hub-data"),
            "--address",
            address,
            "--enrol-burst",
            str(BURST),
            "--enrol-rate",
            "2",
        )
        wait_for(lambda: "hub serving" in process.stdout or not process.alive(), "the hub")
        assert process.alive(), process.report()
        yield TlsHub(process, address, deployment.directory / "hub-data" / "admin")


def wrong(token: str) -> str:
    """The token with another secret: well formed, the right pin, never issued."""
    prefix, token_id, _, pin = token.split(".")
    return f"{prefix}.{token_id}.{'A' * 43}.{pin}"


def refusal(attempt: Callable[[], object]) -> str:
    """Why the hub refused ``attempt`` ("" if it did not)."""
    try:
        attempt()
    except PollinateError as exc:
        return str(exc)
    return ""


def until_enrolled(hub: TlsHub, token: str) -> NodeCredentials:
    """Enrol with ``token``, trying again while (and only while) this address is over its
    limit: a refusal for any other reason fails the test."""
    enrolled: list[NodeCredentials] = []

    def attempt() -> bool:
        why = refusal(lambda: enrolled.append(enrol(hub.enrol, token)))
        assert not why or "too many enrolment attempts" in why, why
        return bool(enrolled)

    wait_for(attempt, "this address to earn an attempt back", TIMEOUT)
    return enrolled[0]


def test_a_burst_of_wrong_tokens_is_cut_off_and_costs_honest_nodes_nothing(
    hub: TlsHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    issued, second = hub.token(), hub.token()

    # a stranger guesses: the hub answers the first BURST or so, then refuses at once
    reasons = []
    while len(reasons) < MAX_ATTEMPTS:
        reasons.append(refusal(lambda: enrol(hub.enrol, wrong(issued))))
        if "too many enrolment attempts" in reasons[-1]:
            break
    assert "too many enrolment attempts from 127.0.0.1" in reasons[-1], reasons[-3:]
    assert "nothing was spent; try again in" in reasons[-1]
    assert len(reasons) > BURST  # the burst was answered, each for its token
    assert all("unknown join token" in r for r in reasons[:BURST])

    # the hub's log names the address (without the port), for wrong tokens and the cut-off
    wait_for(lambda: "too many attempts" in hub.log(), "the cut-off in the hub's log")
    assert re.search(r"refused an enrolment from 127\.0\.0\.1: unknown join token", hub.log())
    assert re.search(r"refused an enrolment from 127\.0\.0\.1: too many attempts", hub.log())
    assert issued.split(".")[2] not in hub.process.stderr  # no secret in the log

    # a valid token sent with a malformed CSR, once the address may try again: refused for
    # its CSR, and the token is not spent
    with monkeypatch.context() as patched:
        patched.setattr(client_module, "make_key_and_csr", lambda: (b"", b"not a CSR"))
        malformed: list[str] = []

        def csr_refused() -> bool:
            why = refusal(lambda: enrol(hub.enrol, issued))
            assert why, "the hub signed a malformed CSR"
            malformed.append(why)
            return "too many enrolment attempts" not in why

        wait_for(csr_refused, "the address to earn an attempt back", TIMEOUT)
    assert "not a readable PEM CSR" in malformed[-1]
    wait_for(lambda: "not a readable PEM CSR" in hub.log(), "the CSR refusal in the log")
    assert re.search(r"refused an enrolment from 127\.0\.0\.1: the certificate sign", hub.log())

    # the same token with a good CSR enrols; so does another honest node
    first = until_enrolled(hub, issued)
    other = until_enrolled(hub, second)
    ids = {node_id_from_certificate(c.cert_pem) for c in (first, other)}
    assert len(ids) == 2

    for credentials in (first, other):  # and their certificates work on the fleet port
        node = FleetClient(hub.fleet, credentials)
        try:
            node.heartbeat("app", {})
            assert node.node_id == node_id_from_certificate(credentials.cert_pem)
        finally:
            node.close()
    assert hub.process.alive(), hub.process.report()
