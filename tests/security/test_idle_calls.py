"""A call whose request never arrives is cut, on every method of every port (issue 13, "Starve").

gRPC calls a unary handler only once the request has arrived, so while the hub served its
methods as unary, a peer that sent headers and then nothing held its call until it hung up
(at most 32 per connection, any number of connections). Now every method reads its one request
itself, within ``guards.REQUEST_SECONDS``; the nodes' and users' unary clients are unchanged.

A real hub with TLS on its one address runs in this process on 127.0.0.1, so the deadline is
patched small where a test waits for it, or large where a test needs calls held; every wait
polls a call's status with a generous bound, and nothing asserts how long anything took.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from pollinate.security import NodeCredentials
from pollinate.security.guest import ENROL_SERVER_NAME, GUEST_CERT_PEM, GUEST_KEY_PEM
from pollinate.transport import control_service, fleet_service, guards
from pollinate.transport import fleet_pb2 as pb
from pollinate.transport.client import ControlClient, FleetClient, HubRefused, diagnose, enrol
from tests.deployment.conftest import wait_for
from tests.transport.test_tls import RunningHub, start_hub

FLEET, CONTROL = "/pollinate.v1.Fleet/", "/pollinate.v1.Control/"
FLEET_METHODS = ["Heartbeat", "Renew", "Diagnose", "PullTask"]
ENROL_METHODS = ["Enrol", "Diagnose"]
CONTROL_METHODS = ["SubmitRun", "ListRuns", "StopRun", "CreateToken", "FollowLog"]
WAIT = 60.0  # a bound on polling for a status, generous for a loaded machine


@dataclass
class Ports:
    """A running hub, a node it enrolled, and a channel to each of its ports as that node."""

    running: RunningHub
    node: NodeCredentials
    channels: dict[str, grpc.Channel]

    @property
    def control(self) -> str:
        return f"127.0.0.1:{self.running.servers.port}"

    def channel(self, port: str) -> grpc.Channel:
        """A new connection to the hub as ``port`` says ("fleet": the node, "enrol": a
        guest, "control": the admin), closed at the end."""
        address = f"127.0.0.1:{self.running.servers.port}"
        options = [("grpc.use_local_subchannel_pool", 1)]  # a connection of its own
        if port == "control":
            admin = self.running.admin
            tls = grpc.ssl_channel_credentials(admin.ca_pem, admin.key_pem, admin.cert_pem)
            channel = grpc.secure_channel(address, tls, options)
        elif port == "enrol":
            tls = grpc.ssl_channel_credentials(self.node.enrol_pem, GUEST_KEY_PEM, GUEST_CERT_PEM)
            options.append(("grpc.ssl_target_name_override", ENROL_SERVER_NAME))
            channel = grpc.secure_channel(address, tls, options)
        else:
            node = self.node
            tls = grpc.ssl_channel_credentials(node.ca_pem, node.key_pem, node.cert_pem)
            channel = grpc.secure_channel(address, tls, options)
        self.channels[f"{port} {len(self.channels)}"] = channel
        return channel


def serve_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seconds: float | None
) -> Iterator[Ports]:
    """A TLS hub whose calls must send their request within ``seconds`` (the hub's own
    deadlines if None), and a node it enrolled."""
    if seconds is not None:
        monkeypatch.setattr(guards, "REQUEST_SECONDS", seconds)
        monkeypatch.setattr(control_service, "SUBMIT_SECONDS", seconds)
    running = start_hub(tmp_path / "hub")
    ports = Ports(running, enrol(running.enrol, running.token()), {})
    try:
        yield ports
    finally:
        for channel in ports.channels.values():
            channel.close()
        running.servers.stop(0)
        running.hub.close()


@pytest.fixture
def ports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Ports]:
    yield from serve_with(tmp_path, monkeypatch, None)


@pytest.fixture
def quick(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Ports]:
    """Calls are cut a second after they start without a request."""
    yield from serve_with(tmp_path, monkeypatch, 1.0)


@pytest.fixture
def patient(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Ports]:
    """Calls without a request are held for longer than any test here lasts."""
    yield from serve_with(tmp_path, monkeypatch, 600.0)


class Held:
    """Calls that send their headers and never a message, until ``release``."""

    def __init__(self) -> None:
        self._release = threading.Event()
        self.calls: list[Any] = []

    def open(self, channel: grpc.Channel, method: str, count: int = 1) -> list[Any]:
        call = channel.stream_unary(method)
        opened = [call.future(self._nothing()) for _ in range(count)]
        self.calls += opened
        return opened

    def _nothing(self) -> Iterator[bytes]:
        self._release.wait(WAIT * 2)
        return
        yield b""

    def release(self) -> None:
        self._release.set()
        for call in self.calls:
            call.cancel()


@pytest.fixture
def held() -> Iterator[Held]:
    calls = Held()
    yield calls
    calls.release()


def codes(calls: list[Any]) -> list[grpc.StatusCode | None]:
    """Each call's status, None while it is open."""
    return [call.code() if call.done() else None for call in calls]


def test_a_call_that_sends_no_request_is_cut_on_every_port_with_one_line_naming_its_peer(
    quick: Ports, held: Held, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "pollinate.transport")
    calls = [held.open(quick.channel("fleet"), FLEET + m)[0] for m in FLEET_METHODS]
    calls += [held.open(quick.channel("enrol"), FLEET + m)[0] for m in ENROL_METHODS]
    calls += [held.open(quick.channel("control"), CONTROL + m)[0] for m in CONTROL_METHODS]

    wait_for(lambda: None not in codes(calls), "the hub to cut every idle call", WAIT)
    assert codes(calls) == [grpc.StatusCode.DEADLINE_EXCEEDED] * len(calls)
    assert "sent no request within 1s" in calls[0].details()
    cut = [r.getMessage() for r in caplog.records if "sent no request" in r.getMessage()]
    assert len(cut) == len(calls), cut
    assert all(" from ipv4:127.0.0.1:" in line for line in cut), cut
    methods = sorted(line.split(" from ")[0] for line in cut)
    assert methods == sorted(FLEET_METHODS + ENROL_METHODS + CONTROL_METHODS)

    # the hub goes on serving every port
    fleet = FleetClient(quick.running.fleet, quick.node)
    control = ControlClient(quick.control, quick.running.admin)
    try:
        fleet.heartbeat("app", {})
        assert control.list_runs() == []
        assert enrol(quick.running.enrol, quick.running.token()).cert_pem
    finally:
        fleet.close()
        control.close()


def test_idle_calls_on_every_port_hold_nothing_an_honest_call_needs(
    patient: Ports, held: Held
) -> None:
    idle = []
    for _ in range(5):  # 100 on the fleet port, over five connections
        channel = patient.channel("fleet")
        idle += held.open(channel, FLEET + "Heartbeat", 10)
        idle += held.open(channel, FLEET + "PullTask", 10)
    idle += held.open(patient.channel("enrol"), FLEET + "Enrol", 20)
    idle += held.open(patient.channel("control"), CONTROL + "ListRuns", 10)
    idle += held.open(patient.channel("control"), CONTROL + "FollowLog", 10)

    fleet = FleetClient(patient.running.fleet, patient.node)
    control = ControlClient(patient.control, patient.running.admin)
    try:
        for _ in range(3):
            fleet.heartbeat("app", {})
            assert control.list_runs() == []
        assert enrol(patient.running.enrol, patient.running.token()).cert_pem
    finally:
        fleet.close()
        control.close()
    assert codes(idle) == [None] * len(idle)  # all still held while the honest calls answered


def test_a_source_holds_at_most_its_limit_of_newcomer_calls(patient: Ports, held: Held) -> None:
    limit = fleet_service.NEWCOMER_CALLS_PER_SOURCE
    idle = held.open(patient.channel("enrol"), FLEET + "Enrol", 20)
    idle += held.open(patient.channel("enrol"), FLEET + "Diagnose", limit - 20 + 5)

    def refused() -> int:
        return codes(idle).count(grpc.StatusCode.RESOURCE_EXHAUSTED)

    wait_for(lambda: refused() >= 5, "the hub to refuse the calls past the limit", WAIT)
    assert refused() == 5 and codes(idle).count(None) == limit
    assert "127.0.0.1 already has 32 calls open" in next(
        call.details() for call in idle if call.done()
    )
    # the address is full: its own next call is refused at once, until its calls end
    with pytest.raises(HubRefused, match="127.0.0.1 already has 32 calls open"):
        enrol(patient.running.enrol, patient.running.token())
    held.release()
    token = patient.running.token()

    def enrolled() -> bool:
        try:
            return bool(enrol(patient.running.enrol, token).cert_pem)
        except HubRefused as exc:
            assert "calls open" in str(exc), exc
            return False

    wait_for(enrolled, "the address's calls to end and its enrolment to go through", WAIT)


def test_a_call_with_no_request_two_requests_or_garbage_is_refused(ports: Ports) -> None:
    requests = {
        "no request": [],
        "two requests": [pb.ListRunsRequest().SerializeToString()] * 2,
        "garbage": [b"\xff\xff\xff\xff not protobuf"],
    }
    for port, method in [("fleet", FLEET + "Heartbeat"), ("control", CONTROL + "ListRuns")]:
        call = ports.channel(port).stream_unary(method)
        for what, messages in requests.items():
            with pytest.raises(grpc.RpcError) as refused:
                call(iter(messages), timeout=WAIT)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, what)
    # an empty request is a request: ListRunsRequest() is zero bytes on the wire
    listed = ports.channel("control").stream_unary(CONTROL + "ListRuns")
    assert listed(iter([b""]), timeout=WAIT) == b""


def test_every_method_answers_the_unary_clients(ports: Ports) -> None:
    running, node = ports.running, ports.node
    assert diagnose(running.enrol, node) is None  # Diagnose, as a guest
    fleet = FleetClient(running.fleet, node)
    control = ControlClient(ports.control, running.admin)
    try:
        fleet.heartbeat("app", {})  # Heartbeat
        assert fleet.pull_task(0.0) is None  # PullTask: no run, no task
        assert fleet.renew(node).cert_pem  # Renew
        reply = fleet.stub.Diagnose(pb.DiagnoseRequest(certificate_pem=node.cert_pem), timeout=WAIT)
        assert reply.accepted  # Diagnose, on the fleet port
        assert control.create_token(60)[0]  # CreateToken
        assert control.list_runs() == []  # ListRuns
        with pytest.raises(HubRefused, match="app archive"):  # SubmitRun: the request arrived
            control.submit_run(b"not an archive", "0" * 64, {}, 1, 0)
        with pytest.raises(HubRefused, match="no run"):  # StopRun
            control.stop_run("nope")
        with pytest.raises(HubRefused, match="no run 'nope'"):  # FollowLog
            list(control.follow_log("nope"))
    finally:
        fleet.close()
        control.close()
