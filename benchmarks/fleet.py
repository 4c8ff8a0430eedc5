"""A hub with 1,000 and 10,000 connected nodes: heartbeats, hub CPU and memory, a round's dispatch.

What runs, per fleet size N, all on 127.0.0.1 and bounded in time (every process ends by
itself at its deadline, and is killed at the end anyway):

- a hub process: ``Hub`` and ``transport.ports.serve`` as ``pollinate hub`` runs them (TLS
  with a client certificate on every connection, heartbeat every 5 s, timeout 30 s), with an
  enrolment rate limit wide enough for N enrolments from one address (``--enrol-burst``);
- load-generator processes (3, or one per 2,500 nodes), each running its share of the
  simulated nodes on one asyncio loop with ``grpc.aio``. Each node is **enrolled through the
  hub's real ``Enrol`` call** (its own key and CSR, a multi-use join token from
  ``Hub.create_token(ttl, uses=N)``, the enrolment identity pinned by the token, the guest
  certificate at the handshake), then opens its own mutual-TLS channel with its certificate
  (one TCP connection per node, 75 a second over the fleet), heartbeats at the interval the
  hub answers (the first one at a random point of it), long-polls
  ``PullTask`` (50 s, as ``NodeAgent`` does) and answers a fit task with its arrays
  unchanged and one example.

What is measured, once all N nodes are alive at the hub:

- heartbeat latency p50 / p99 over a window of ``--window`` seconds with every node connected
  and no round (each node's Heartbeat call, timed by its node), and how many failed in it;
  then the p99, the slowest and the failures of the heartbeats that started during the round;
- the hub's CPU over the window (process CPU seconds per wall second) and its memory per
  connected node ((RSS now - RSS before any node) / N);
- a round: a tiny app (10 float32 parameters, FedAvg) sampling ``--sample`` of the N nodes is
  submitted; "dispatch" is the time from the round's fit stage starting at the hub
  (``StageStarted``) to the last sampled node receiving its task (timed by the node, same
  clock), and "round" is the hub's own time of the round (``RoundRecord.seconds``).

Each process raises its RLIMIT_NOFILE soft limit to the hard limit: the hub needs one file
descriptor per connected node (plus ~100), each generator one per node it runs.

Run ``python benchmarks/fleet.py`` (1,000 then 10,000 nodes, ~10 minutes on 2 cores) or
``--nodes 500 --window 10`` for a quick look.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import math
import multiprocessing
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc

import pollinate.wire as wire
from pollinate.app import app_hash
from pollinate.hub.archives import pack_app
from pollinate.hub.credentials import HubCredentials
from pollinate.hub.hub import Hub
from pollinate.hub.rate_limit import RateLimiter
from pollinate.loop.events import RoundFinished, Stage, StageStarted
from pollinate.records import Message
from pollinate.security import make_key_and_csr, parse_token
from pollinate.security.enrolment import fetch_pinned_certificate
from pollinate.security.guest import ENROL_SERVER_NAME, GUEST_CERT_PEM, GUEST_KEY_PEM
from pollinate.transport import CHUNK_BYTES, FLEET_SERVICE, NODE_CHANNEL_OPTIONS, data_chunk
from pollinate.transport import fleet_pb2 as pb
from pollinate.transport.ports import serve

SPAWN = multiprocessing.get_context("spawn")
PULL_WAIT = 50.0  # as NodeAgent
ENROLS_AT_ONCE = 24  # over all generators: the hub admits 32 newcomer calls per address
CONNECTS_PER_SECOND = 75  # over all generators: how fast nodes open their channels (a
# node's TLS handshake and its first heartbeat, two SQLite commits, cost the hub ~10 ms here:
# faster arrivals queue on a loaded machine, time out and come again)
NODES_PER_GENERATOR = 2500  # more generators past it (``--generators`` overrides)
MOSTLY_ALIVE = 0.95
NO_ROUND = {"fit_started": 0.0, "round_finished": 0.0, "round_seconds": math.nan, "replies": 0}
CALLS = ("all", "heartbeats", "polls", "none")
"""What the nodes do once connected (``--calls``): all (a node's life: a round is run), or
only heartbeats, only long-polls, or nothing (channels alone): the hub's cost of each."""
CALL_TIMEOUT = 10.0  # a heartbeat's deadline, as FleetClient's

PYPROJECT = """\
[project]
name = "fleet-bench"
version = "0.1.0"

[tool.pollinate]
server = "fleet_bench.server:server_fn"
client = "fleet_bench.client:client_fn"

[tool.pollinate.config]
sample = 1000
available = 1000
"""

SERVER = """\
import numpy as np

from pollinate import Arrays, FedAvg, Sampling, ServerApp


def server_fn(run_config):
    sample, available = int(run_config["sample"]), int(run_config["available"])
    sampling = Sampling(
        fraction_fit=sample / available,
        min_fit_clients=sample,
        min_available_clients=sample,
        fraction_evaluate=0.0,
    )
    model = Arrays({"w": np.ones(10, np.float32)})
    return ServerApp(FedAvg(sampling=sampling), num_rounds=1, initial_arrays=model)
"""

CLIENT = """\
from pollinate import Client


class Echo(Client):
    def fit(self, arrays, config):
        return arrays, 1, {}


def client_fn(context):
    return Echo()
"""


def raise_file_limit() -> int:
    """Raise this process's RLIMIT_NOFILE soft limit to its hard limit; the new limit."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def write_app(directory: Path) -> Path:
    package = directory / "fleet_bench"
    package.mkdir(parents=True)
    (directory / "pyproject.toml").write_text(PYPROJECT)
    (package / "__init__.py").write_text("")
    (package / "server.py").write_text(SERVER)
    (package / "client.py").write_text(CLIENT)
    return directory


# --- the simulated nodes ------------------------------------------------------------------------


@dataclasses.dataclass
class Tally:
    """What a generator's nodes saw."""

    beats: list[tuple[float, float]] = dataclasses.field(default_factory=list)  # (start, s)
    failed_beats: list[tuple[float, str]] = dataclasses.field(default_factory=list)
    tasks: list[tuple[float, int]] = dataclasses.field(default_factory=list)  # (epoch, round)
    refused_replies: list[str] = dataclasses.field(default_factory=list)
    failed_pulls: list[str] = dataclasses.field(default_factory=list)
    enrol_seconds: float = 0.0
    enrol_retries: int = 0


class SimulatedFleet:
    """``count`` simulated nodes of one process, on its running asyncio loop."""

    def __init__(
        self, address: str, token: str, count: int, enrols_at_once: int = 8, calls: str = "all"
    ) -> None:
        self.address, self.token, self.count = address, token, count
        self.enrols_at_once, self.calls = enrols_at_once, calls
        self.tally = Tally()
        self.connected = 0
        self._channels: list[grpc.aio.Channel] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def enrol_all(self) -> list[tuple[bytes, bytes, bytes]]:
        """Enrol every node through the hub's ``Enrol``: (key, certificate, CA) of each."""
        started = time.perf_counter()
        host, _, port = self.address.rpartition(":")
        pin = parse_token(self.token).ca_pin
        enrol_pem = await asyncio.to_thread(fetch_pinned_certificate, host, int(port), pin)
        tls = grpc.ssl_channel_credentials(enrol_pem, GUEST_KEY_PEM, GUEST_CERT_PEM)
        options = [("grpc.ssl_target_name_override", ENROL_SERVER_NAME)]
        at_once = asyncio.Semaphore(self.enrols_at_once)
        async with grpc.aio.secure_channel(self.address, tls, options) as channel:
            call = channel.unary_unary(
                f"/{FLEET_SERVICE}/Enrol",
                request_serializer=pb.EnrolRequest.SerializeToString,
                response_deserializer=pb.EnrolReply.FromString,
            )
            enrolled = await asyncio.gather(
                *(self._enrol(call, at_once) for _ in range(self.count))
            )
        self.tally.enrol_seconds = time.perf_counter() - started
        return enrolled

    async def _enrol(self, call: Any, at_once: asyncio.Semaphore) -> tuple[bytes, bytes, bytes]:
        key_pem, csr_pem = make_key_and_csr()
        request = pb.EnrolRequest(token=self.token, csr_pem=csr_pem)
        async with at_once:
            for attempt in range(100):
                try:
                    reply = await call(request, timeout=60)
                    return key_pem, bytes(reply.certificate_pem), bytes(reply.ca_pem)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() not in (
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        grpc.StatusCode.UNAVAILABLE,
                    ):
                        raise
                    self.tally.enrol_retries += 1
                    await asyncio.sleep(0.05 * (attempt + 1))
        raise RuntimeError("an enrolment was refused 100 times")

    def start(
        self,
        credentials: list[tuple[bytes, bytes, bytes]],
        until: float,
        connects: float = CONNECTS_PER_SECOND,
    ) -> None:
        """Start every node (``connects`` channels opened a second), each serving until the
        monotonic time ``until``."""
        for index, (key, cert, ca) in enumerate(credentials):
            delay = index / connects
            self._tasks.append(asyncio.create_task(self._node(key, cert, ca, delay, until)))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(c.close(None) for c in self._channels), return_exceptions=True)

    async def _node(self, key: bytes, cert: bytes, ca: bytes, delay: float, until: float) -> None:
        await asyncio.sleep(delay)
        tls = grpc.ssl_channel_credentials(ca, key, cert)
        channel = grpc.aio.secure_channel(self.address, tls, NODE_CHANNEL_OPTIONS)
        self._channels.append(channel)
        node = _Node(channel, self.tally)
        interval = await node.first_heartbeat()
        self.connected += 1
        beat = self.calls in ("all", "heartbeats")
        poll = self.calls in ("all", "polls")
        await asyncio.gather(
            node.beat(interval, until) if beat else _idle(until),
            node.serve(until) if poll else _idle(until),
        )


async def _idle(until: float) -> None:
    await asyncio.sleep(max(0.0, until - time.monotonic()))


class _Node:
    """One simulated node: heartbeats and long-polls on its own channel."""

    def __init__(self, channel: grpc.aio.Channel, tally: Tally) -> None:
        self.tally = tally
        self.session = f"{random.getrandbits(64):016x}"
        self.heartbeat = channel.unary_unary(
            f"/{FLEET_SERVICE}/Heartbeat",
            request_serializer=pb.HeartbeatRequest.SerializeToString,
            response_deserializer=pb.HeartbeatReply.FromString,
        )
        self.pull = channel.unary_stream(
            f"/{FLEET_SERVICE}/PullTask",
            request_serializer=pb.PullTaskRequest.SerializeToString,
            response_deserializer=pb.TaskChunk.FromString,
        )
        self.push = channel.stream_stream(
            f"/{FLEET_SERVICE}/PushReply", response_deserializer=pb.PushReplyAck.FromString
        )

    async def first_heartbeat(self) -> float:
        """Heartbeat until the hub answers; the interval it asks for."""
        while True:
            with contextlib.suppress(grpc.aio.AioRpcError):
                return await self._beat_once()
            await asyncio.sleep(1.0)

    async def _beat_once(self) -> float:
        request = pb.HeartbeatRequest(app_hash="fleet-bench", session=self.session)
        request.resources["cpus"] = "2"
        started, clock = time.time(), time.perf_counter()
        reply = await self.heartbeat(request, timeout=CALL_TIMEOUT)
        self.tally.beats.append((started, time.perf_counter() - clock))
        return float(reply.interval_seconds)

    async def beat(self, interval: float, until: float) -> None:
        await asyncio.sleep(random.uniform(0, interval))  # nodes start at random phases
        while time.monotonic() < until:
            try:
                interval = await self._beat_once()
            except grpc.aio.AioRpcError as exc:
                failure = f"{exc.code().name}: {exc.details()}"
                self.tally.failed_beats.append((time.time(), failure))
            await asyncio.sleep(interval)

    async def serve(self, until: float) -> None:
        while time.monotonic() < until:
            try:
                task = await self._pull()
            except grpc.aio.AioRpcError as exc:
                self.tally.failed_pulls.append(f"{exc.code().name}: {exc.details()}")
                await asyncio.sleep(1.0)
                continue
            if task is not None:
                self.tally.tasks.append((time.time(), task.round))
                await self._answer(task)

    async def _pull(self) -> Message | None:
        request = pb.PullTaskRequest(wait_seconds=PULL_WAIT)
        decoder: wire.Decoder | None = None
        async for chunk in self.pull(request, timeout=PULL_WAIT + 30):
            if decoder is None:
                decoder = wire.Decoder()  # the first chunk: app hash and run config
                continue
            decoder.feed(chunk.data)
        return None if decoder is None else decoder.finish()

    async def _answer(self, task: Message) -> None:
        """Push the reply as a node does: its header, its arrays once the hub says so."""
        reply = task.reply(arrays=task.arrays, num_examples=1)
        head, body = wire.encode_parts(reply, CHUNK_BYTES)
        call = self.push(timeout=60)
        try:
            await call.write(data_chunk(head))
            answer = await call.read() if reply.arrays.nbytes else None
            if answer is None or (answer is not grpc.aio.EOF and answer.send_arrays):
                for piece in body:
                    await call.write(data_chunk(piece))
                await call.done_writing()
                answer = await call.read()
        except grpc.aio.AioRpcError as exc:
            self.tally.refused_replies.append(f"{exc.code().name}: {exc.details()}")
            return
        finally:
            call.cancel()  # over already, unless the hub refused the reply from its header
        if answer is grpc.aio.EOF or not answer.accepted:
            self.tally.refused_replies.append(
                "no answer" if answer is grpc.aio.EOF else answer.reason
            )


# --- the processes ---------------------------------------------------------------------------


def generator_process(
    address: str,
    token: str,
    count: int,
    generators: int,
    calls: str,
    lifetime: float,
    pipe: Connection,
) -> None:
    """Enrol and run ``count`` nodes making ``calls``, one of ``generators`` processes;
    answer the orchestrator's requests; end by ``lifetime``."""
    raise_file_limit()
    until = time.monotonic() + lifetime
    asyncio.run(_generate(address, token, count, generators, calls, until, pipe))


async def _generate(
    address: str,
    token: str,
    count: int,
    generators: int,
    calls: str,
    until: float,
    pipe: Connection,
) -> None:
    enrols = max(1, ENROLS_AT_ONCE // generators)
    fleet = SimulatedFleet(address, token, count, enrols, calls)
    credentials = await fleet.enrol_all()
    pipe.send(("enrolled", fleet.tally.enrol_seconds, fleet.tally.enrol_retries))
    fleet.start(credentials, until, CONNECTS_PER_SECOND / generators)
    try:
        while time.monotonic() < until:
            if not pipe.poll():
                await asyncio.sleep(0.2)
                continue
            request = pipe.recv()
            if request == "stop":
                break
            if request == "connected":
                pipe.send(fleet.connected)
            elif request == "tally":
                pipe.send(fleet.tally)
    finally:
        await fleet.stop()


def hub_process(
    data_dir: str, nodes: int, interval: float, lifetime: float, pipe: Connection
) -> None:
    """A hub as ``pollinate hub`` runs one; answers the orchestrator; ends by ``lifetime``."""
    raise_file_limit()
    logging.basicConfig(level=logging.WARNING, format="hub %(levelname)s %(name)s: %(message)s")
    directory = Path(data_dir)
    credentials = HubCredentials.load_or_create(directory, ["localhost"], ["127.0.0.1"])
    hub = Hub(
        directory,
        credentials=credentials,
        heartbeat_interval=interval,
        heartbeat_timeout=max(30.0, 6 * interval),  # as `pollinate hub` pairs them
        enrol_limit=RateLimiter(nodes + 100, 100.0),
    )
    marks: dict[str, float] = {}

    def note(run_id: str, event: object) -> None:
        if isinstance(event, StageStarted) and event.stage == Stage.FIT and event.round > 0:
            marks.setdefault("fit_started", time.time())
        elif isinstance(event, RoundFinished) and event.record.round > 0:
            marks.update(round_seconds=event.record.seconds, replies=event.record.replies)
            marks["round_finished"] = time.time()
            marks["failures"] = event.record.failures

    hub.events.subscribe(note)
    servers = serve(hub, "127.0.0.1:0")
    hub.start()
    token, _ = hub.create_token(3600, uses=nodes)
    pipe.send((servers.port, token))
    until = time.monotonic() + lifetime
    try:
        while time.monotonic() < until:
            if not pipe.poll(0.5):
                continue
            request, *args = pipe.recv()
            if request == "stop":
                break
            if request == "alive":
                pipe.send(len(hub.fleet.alive()))
            elif request == "marks":
                pipe.send(dict(marks))
            elif request == "submit":
                app = Path(args[0])
                overrides = {"sample": str(args[1]), "available": str(nodes)}
                pipe.send(hub.submit_run(pack_app(app), app_hash(app), overrides, None, 0))
    finally:
        servers.stop(0)
        hub.close()


# --- one fleet size ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Figures:
    nodes: int
    enrol_seconds: float
    connect_seconds: float
    beats: int
    p50: float  # over the window, all nodes connected and idle
    p99: float
    failed_beats: int  # over the window
    round_p99: float  # heartbeats that started during the round
    round_worst: float
    round_failed_beats: int
    hub_cpu: float  # CPU seconds per wall second over the window
    bytes_per_node: float
    sample: int
    dispatch_seconds: float
    round_seconds: float
    replies: int


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def ask(pipe: Connection, request: Any, timeout: float = 120.0) -> Any:
    pipe.send(request)
    if not pipe.poll(timeout):
        raise RuntimeError(f"no answer to {request!r} within {timeout:.0f}s")
    return pipe.recv()


def wait_for(condition: Any, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(1.0)


@contextlib.contextmanager
def processes() -> Iterator[list[Any]]:
    """Processes started into the list are killed at the end, whatever happened."""
    started: list[Any] = []
    try:
        yield started
    finally:
        for process in started:
            if process.is_alive():
                process.kill()
            process.join(timeout=30)


def measure(
    nodes: int,
    generators: int,
    window: float,
    sample: int,
    interval: float = 5.0,
    calls: str = "all",
) -> Figures:
    """Bring up a hub and ``nodes`` simulated nodes making ``calls``, measure, and stop them
    all. The window starts once every node is alive at the hub, or, on a machine too loaded
    for that, once ``MOSTLY_ALIVE`` of them are after ``nodes / CONNECTS_PER_SECOND + 120`` s
    (a note says how many)."""
    # every process ends by itself after this long: enrolments (~80 a second), connections
    # (CONNECTS_PER_SECOND), the window and a round, with room
    lifetime = 300 + nodes / 50 + nodes / CONNECTS_PER_SECOND + window
    with tempfile.TemporaryDirectory(prefix="pollinate-fleet-") as directory, processes() as ps:
        hub_pipe, theirs = SPAWN.Pipe()
        args = (f"{directory}/hub", nodes, interval, lifetime, theirs)
        hub = SPAWN.Process(target=hub_process, args=args, daemon=True)
        hub.start()
        ps.append(hub)
        port, token = hub_pipe.recv() if hub_pipe.poll(60) else (None, None)
        if port is None:
            raise RuntimeError("the hub did not start within 60 s")
        idle_rss = proc_rss(hub.pid)
        pipes = []
        for index in range(generators):
            count = nodes // generators + (index < nodes % generators)
            ours, theirs = SPAWN.Pipe()
            args = (f"127.0.0.1:{port}", token, count, generators, calls, lifetime)
            process = SPAWN.Process(target=generator_process, args=(*args, theirs), daemon=True)
            process.start()
            ps.append(process)
            pipes.append(ours)
        started = time.monotonic()
        enrolled = [p.recv() if p.poll(lifetime) else None for p in pipes]
        if None in enrolled:
            raise RuntimeError("a generator did not finish enrolling")
        enrol_seconds = time.monotonic() - started
        connecting = time.monotonic()
        late = nodes / CONNECTS_PER_SECOND + 120

        def enough() -> bool:
            alive = ask(hub_pipe, ("alive",))
            waited = time.monotonic() - connecting
            return alive >= nodes or (waited > late and alive >= MOSTLY_ALIVE * nodes)

        wait_for(enough, f"{nodes} nodes alive", lifetime)
        connect_seconds = time.monotonic() - connecting
        time.sleep(interval)  # every node beats at its own phase
        window_start, cpu_start = time.time(), proc_cpu(hub.pid)
        time.sleep(window)
        window_end = time.time()
        hub_cpu = (proc_cpu(hub.pid) - cpu_start) / (window_end - window_start)
        rss = proc_rss(hub.pid)
        alive = ask(hub_pipe, ("alive",))
        if calls == "all":
            app = write_app(Path(directory) / "app")
            ask(hub_pipe, ("submit", str(app), sample))
            wait_for(lambda: "round_seconds" in ask(hub_pipe, ("marks",)), "the round", 300)
        marks = ask(hub_pipe, ("marks",)) or NO_ROUND
        tallies: list[Tally] = [ask(p, "tally") for p in pipes]
        for p in pipes:
            p.send("stop")
        hub_pipe.send(("stop",))

    def during(start: float, end: float) -> tuple[list[float], int]:
        beats = [s for t in tallies for at, s in t.beats if start <= at < end]
        return beats, sum(start <= at < end for t in tallies for at, _ in t.failed_beats)

    beats, failed = during(window_start, window_end)
    in_round, failed_in_round = during(marks["fit_started"], marks["round_finished"])
    taken = [when for t in tallies for when, _ in t.tasks]
    quantiles = statistics.quantiles(beats, n=100) if len(beats) > 1 else [0.0] * 99
    if alive < nodes:
        print(f"  note: only {alive} of {nodes} nodes alive at the end of the window")
    for what, problems in (
        ("heartbeats", Counter(p[:120] for t in tallies for _, p in t.failed_beats)),
        ("long-polls", Counter(p[:120] for t in tallies for p in t.failed_pulls)),
        ("replies", Counter(p[:120] for t in tallies for p in t.refused_replies)),
    ):
        for problem, times in problems.most_common(3):
            print(f"  {what}: {times} x {problem}")
    return Figures(
        nodes=nodes,
        enrol_seconds=enrol_seconds,
        connect_seconds=connect_seconds,
        beats=len(beats),
        p50=quantiles[49],
        p99=quantiles[98],
        failed_beats=failed,
        round_p99=statistics.quantiles(in_round, n=100)[98] if len(in_round) > 1 else 0.0,
        round_worst=max(in_round, default=0.0),
        round_failed_beats=failed_in_round,
        hub_cpu=hub_cpu,
        bytes_per_node=(rss - idle_rss) / nodes,
        sample=sample,
        dispatch_seconds=max(taken, default=float("nan")) - marks["fit_started"],
        round_seconds=marks["round_seconds"],
        replies=int(marks["replies"]),
    )


HEADER = (
    f"{'nodes':>6} {'enrol s':>7} {'connect s':>9} {'beats':>6} {'p50 ms':>7} {'p99 ms':>7} "
    f"{'failed':>6} {'round p99 ms':>12} {'max ms':>7} {'failed':>6} {'hub cpu':>7} "
    f"{'KB/node':>7} {'sample':>6} "
    f"{'dispatch s':>10} {'round s':>7} {'replies':>7}"
)


def row(f: Figures) -> str:
    return (
        f"{f.nodes:>6} {f.enrol_seconds:>7.1f} {f.connect_seconds:>9.1f} {f.beats:>6} "
        f"{f.p50 * 1e3:>7.1f} {f.p99 * 1e3:>7.1f} {f.failed_beats:>6} "
        f"{f.round_p99 * 1e3:>12.0f} {f.round_worst * 1e3:>7.0f} {f.round_failed_beats:>6} "
        f"{f.hub_cpu:>7.2f} {f.bytes_per_node / 1e3:>7.1f} {f.sample:>6} "
        f"{f.dispatch_seconds:>10.2f} {f.round_seconds:>7.2f} {f.replies:>7}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument(
        "--generators",
        type=int,
        help=f"load-generator processes (default: 3, or one per {NODES_PER_GENERATOR} nodes)",
    )
    parser.add_argument("--window", type=float, default=30.0, help="seconds measured")
    parser.add_argument("--sample", type=int, default=1000, help="nodes a round samples")
    parser.add_argument("--interval", type=float, default=5.0, help="the hub's heartbeat interval")
    parser.add_argument(
        "--calls", choices=CALLS, default="all", help="what nodes do once connected (no round)"
    )
    args = parser.parse_args()
    print(f"RLIMIT_NOFILE raised to {raise_file_limit()}; {os.cpu_count()} cores; {sys.version}")
    print(HEADER)
    for nodes in args.nodes:
        sample = min(args.sample, nodes)
        generators = args.generators or max(3, -(-nodes // NODES_PER_GENERATOR))
        figures = measure(nodes, generators, args.window, sample, args.interval, args.calls)
        print(row(figures))


if __name__ == "__main__":
    main()
