"""What a deployment round costs against moving its bytes over a plain socket, and hub memory.

What is measured, per configuration of K node processes and a model of P float32 parameters
(4P bytes), on 127.0.0.1:

- seconds per round of a real deployment: ``pollinate hub`` (with its CA: mutual TLS) and K
  ``pollinate node`` processes enrolled with join tokens, as a user starts them, then
  ``pollinate run --hub`` for 5 rounds of FedAvg whose client adds one to the arrays it
  received, in place, and returns them (no training), so what remains is the framework: the
  model down to K nodes, K updates back, decoding, reply checks, folding. (A client that
  returns a fresh ``a + 1`` costs each node a model of fresh memory a round: at 40 nodes and
  a 40 MB model, the nodes' CPU 7.2 -> 4.6 s a round in place, benchmarks/README.md.) The
  figure is the hub's own timing of each round (``history.jsonl``): best and median of the
  5 rounds (the first is the slowest: every process's first model-sized arrays are fresh
  memory). The CPU seconds per round of
  the hub and of all nodes together come with it: here they share 2 cores;
- the time to move the same bytes, 2 x K x 4P (the model down to each node, each update back),
  from one Python process to another over a loopback TCP socket with large ``sendall`` /
  ``recv_into`` buffers (best of 3): the floor for any transport here. Target: a round costs
  at most 2x that ("ratio");
- the **TLS floor**: the same bytes from one process to another over a TLS connection (Python's
  ``ssl`` on a loopback socket, the hub's kind of certificate, 4 MiB ``sendall`` / ``recv_into``
  buffers; best of 3): what any secure transport must pay here. Target (issue 20): a round
  costs at most 3x that ("round/tls");
- the same bytes as 1 MiB messages over gRPC with TLS between two processes, with nothing of
  pollinate (no protobuf, no wire format, no arrays): the floor for pollinate's transport;
- the hub's peak RSS (VmHWM, read just before it is stopped) minus its RSS before the run,
  and the largest node's peak RSS, as multiples of the model. Target: the hub's does not grow
  with K (O(model), not O(K x model)): it takes in at most ``UPLOADS_AT_ONCE`` uploads at once
  (``transport/guards.py``), each straight into its journal file, while the other nodes wait
  with only their reply's header sent, and sends out at most ``DOWNLOADS_AT_ONCE`` tasks'
  arrays at once (one model shared by all), while the others wait. Beside it, the
  peak RSS of the run's own process (the hub's child that runs the strategy: with the screen
  on it keeps the round's updates side by side), sampled while the run goes on;
- once per run, how fast this machine hands out fresh memory (a new process fills a new 1 GB
  array): every round may allocate models' worth of it (the run's result; a client's output
  unless it trains in place), and on
  some virtual machines that, not the network, is the bottleneck.

Configurations: K in {2, 10}, P in {1e6, 1e7, 2.5e8}, skipping any whose estimated memory
(hub and nodes together) exceeds 16 GB, and saying so. Each runs in fresh processes, all
killed at the end. Run ``python benchmarks/deployment.py`` (about 2 minutes) or ``--quick``
(K=2, P=1e6; about 10 seconds).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import multiprocessing
import os
import re
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from multiprocessing.connection import Connection
from pathlib import Path

import grpc
import numpy as np

from pollinate.loop.history import History
from pollinate.security import CertificateAuthority
from pollinate.transport import CHUNK_BYTES
from pollinate.transport.guards import FLOOR_BYTES, UPLOADS_AT_ONCE

ROUNDS = 5
REPEATS = 3  # of each floor
RAW_BUFFER = 4 << 20  # bytes per sendall / recv_into
MEMORY_CAP = 16e9
# Peak RSS of a hub and of a node, in models, for the memory estimate (measured, rounded up):
# the hub holds the round's model (shared by its tasks) and the chunks of the transfers it
# makes at once (UPLOADS_AT_ONCE, or FLOOR_BYTES of small ones: at most the model each);
# the run process the model, the accumulator,
# the result and, with the screen on, every update of the round; a node holds the model it
# got, which the client trains in place.
HUB_MODELS, NODE_MODELS, PROCESS_BYTES = 5, 3, 150e6
TIMEOUT = 600.0
POLLINATE = [sys.executable, "-m", "pollinate"]
ENV = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "PYTHONUNBUFFERED": "1"}
SPAWN = multiprocessing.get_context("spawn")

PYPROJECT = """\
[project]
name = "bench-app"
version = "0.1.0"

[tool.pollinate]
server = "bench_app.server:server_fn"
client = "bench_app.client:client_fn"

[tool.pollinate.config]
parameters = 1000
nodes = 2
screen = "on"
rounds = 5
"""

SERVER = """\
import numpy as np

from pollinate import Arrays, FedAvg, Sampling, ServerApp, Validation


def server_fn(run_config):
    k = int(run_config["nodes"])
    strategy = FedAvg(
        sampling=Sampling(min_fit_clients=k, min_available_clients=k, fraction_evaluate=0.0)
    )
    model = Arrays({"w": np.ones(int(run_config["parameters"]), np.float32)})
    validation = Validation()  # the default: updates screened side by side
    if run_config["screen"] == "off":  # streaming: O(model) memory, no relative bounds
        validation = Validation(anomaly_threshold=None, norm_multiple=None, examples_multiple=None)
    rounds = int(run_config["rounds"])
    return ServerApp(strategy, num_rounds=rounds, initial_arrays=model, validation=validation)
"""

CLIENT = """\
import numpy as np

from pollinate import Arrays, Client


class Echo(Client):
    def fit(self, arrays, config):
        # in place, as Client.fit allows: a fresh output would cost each node a model of
        # fresh memory a round, the client's cost rather than the framework's
        return Arrays({name: np.add(a, 1, out=a) for name, a in arrays.items()}), 1, {}


def client_fn(context):
    return Echo()
"""


@dataclasses.dataclass(frozen=True)
class Figures:
    """What one configuration measured."""

    k: int
    p: int
    screen: str
    round_seconds: list[float]
    hub_cpu: float  # CPU seconds over the whole run: its rounds, round 0, starting the run
    nodes_cpu: float
    hub_growth: int
    node_peak: int
    run_peak: int
    raw_seconds: float = 0.0
    tls_seconds: float = 0.0
    grpc_seconds: float = 0.0

    @property
    def model_bytes(self) -> int:
        return 4 * self.p

    def ratio(self) -> float:
        return statistics.median(self.round_seconds) / self.raw_seconds

    def tls_ratio(self) -> float:
        return statistics.median(self.round_seconds) / self.tls_seconds


# --- the deployment --------------------------------------------------------------------------


def write_app(directory: Path) -> Path:
    package = directory / "bench_app"
    package.mkdir(parents=True)
    (directory / "pyproject.toml").write_text(PYPROJECT)
    (package / "__init__.py").write_text("")
    (package / "server.py").write_text(SERVER)
    (package / "client.py").write_text(CLIENT)
    return directory


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], object], what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


def accepts(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1.0):
            return True
    except OSError:
        return False


def _listening(address: str, process: subprocess.Popen[bytes]) -> bool:
    """Whether ``address`` accepts; True too if ``process`` exited (the caller checks)."""
    return accepts(address) or process.poll() is not None


def memory(pid: int, field: str) -> int:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of a live process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} for process {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a live process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Fleet:
    """A hub and its nodes, each a ``pollinate`` process; ``close`` kills them all."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.processes: list[subprocess.Popen[bytes]] = []
        self.fleet = self.control = f"127.0.0.1:{free_port()}"  # the hub's one address

    def spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        with (self.directory / f"{name}.log").open("wb") as log:
            process = subprocess.Popen([*POLLINATE, *args], stdout=log, stderr=log, env=ENV)
        self.processes.append(process)
        return process

    def start_hub(self) -> int:
        hub = self.spawn(
            "hub",
            *("hub", "--data-dir", str(self.directory / "hub"), "--address", self.fleet),
        )
        wait_for(partial(_listening, self.fleet, hub), f"the hub to listen on {self.fleet}")
        if hub.poll() is not None:
            raise RuntimeError(f"the hub exited:\n{self.log('hub')}")
        return hub.pid

    def start_node(self, app: Path, index: int) -> int:
        token = self.pollinate(
            "token",
            "create",
            "--hub",
            self.control,
            "--credentials",
            str(self.directory / "hub" / "admin"),
        ).strip()
        name = f"node-{index}"
        node = self.spawn(
            name,
            *("node", "--hub", self.fleet, "--app", str(app)),
            *("--token", token, "--data-dir", str(self.directory / name), "--verbose"),
        )
        connected = re.compile(r"connected as node \d+")
        wait_for(lambda: connected.search(self.log(name)) or node.poll() is not None, name)
        if node.poll() is not None:
            raise RuntimeError(f"{name} exited:\n{self.log(name)}")
        return node.pid

    def pollinate(self, *args: str) -> str:
        done = subprocess.run(
            [*POLLINATE, *args], capture_output=True, text=True, env=ENV, timeout=TIMEOUT
        )
        if done.returncode != 0:
            raise RuntimeError(f"`pollinate {' '.join(args)}` failed:\n{done.stdout}{done.stderr}")
        return done.stdout

    def log(self, name: str) -> str:
        return (self.directory / f"{name}.log").read_text(errors="replace")

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
        for process in self.processes:
            process.wait(timeout=30)


@contextmanager
def fleet_of(k: int, app: Path, directory: Path) -> Iterator[tuple[Fleet, int, list[int]]]:
    """A hub and ``k`` nodes; yields the fleet, the hub's pid and the nodes' pids."""
    fleet = Fleet(directory)
    try:
        hub = fleet.start_hub()
        yield fleet, hub, [fleet.start_node(app, i) for i in range(k)]
    finally:
        fleet.close()


def deployment(k: int, p: int, screen: str, directory: Path) -> Figures:
    """Run the app on a fresh hub and ``k`` fresh nodes; the figures but the floors."""
    app = write_app(directory / "app")
    out = directory / "out"
    with fleet_of(k, app, directory) as (fleet, hub, nodes):
        hub_idle = memory(hub, "VmRSS")
        before = [cpu_seconds(pid) for pid in (hub, *nodes)]
        with ChildPeak(hub) as run_process:
            fleet.pollinate(
                *("run", str(app), "--hub", fleet.control, "--out", str(out)),
                *("--credentials", str(directory / "hub" / "admin")),
                *("--config", f"parameters={p}", "--config", f"nodes={k}"),
                *("--config", f"screen={screen!r}", "--config", f"rounds={ROUNDS}"),
            )
        cpu = [cpu_seconds(pid) - b for pid, b in zip((hub, *nodes), before, strict=True)]
        hub_growth = memory(hub, "VmHWM") - hub_idle
        node_peak = max(memory(pid, "VmHWM") for pid in nodes)
    records = [r.to_dict() for r in History.load(out).rounds if r.round > 0]
    if len(records) != ROUNDS or any(r["replies"] != k for r in records):
        raise RuntimeError(f"the run did not finish {ROUNDS} rounds with {k} replies: {records}")
    seconds = [float(r["seconds"]) for r in records]
    return Figures(
        k, p, screen, seconds, cpu[0], sum(cpu[1:]), hub_growth, node_peak, run_process.peak
    )


class ChildPeak:
    """The largest peak RSS (VmHWM) of ``pid``'s children, sampled every 0.1 s while in the
    ``with`` block: the run process ends with its run, so it is read while it lives."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak = pid, 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> ChildPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._done.wait(0.1):
            for child in children(self.pid):
                with contextlib.suppress(OSError, RuntimeError):  # it ended meanwhile
                    self.peak = max(self.peak, memory(child, "VmHWM"))


def children(pid: int) -> list[int]:
    """The child processes of a live process (of all its threads)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


# --- floor 1: the same bytes over a plain socket --------------------------------------------


def receive(total: int, pipe: Connection) -> None:
    """Say on which port, receive ``total`` bytes into one reused buffer, then say how many
    arrived (runs in its own process)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        pipe.send(listener.getsockname()[1])
        connection, _ = listener.accept()
    buffer = memoryview(bytearray(RAW_BUFFER))
    received = 0
    with connection:
        while received < total:
            count = connection.recv_into(buffer)
            if count == 0:
                break
            received += count
    pipe.send(received)


def raw_seconds(model: memoryview, copies: int) -> float:
    """Best seconds to send ``copies`` times ``model`` to another process over TCP."""
    best = float("inf")
    for _ in range(REPEATS):
        ours, theirs = SPAWN.Pipe()
        receiver = SPAWN.Process(target=receive, args=(len(model) * copies, theirs))
        receiver.start()
        try:
            best = min(best, _send(model, copies, ours))
        finally:
            receiver.kill()
            receiver.join()
    return best


def _send(model: memoryview, copies: int, pipe: Connection) -> float:
    with socket.create_connection(("127.0.0.1", _answer(pipe))) as sender:
        started = time.perf_counter()
        for _ in range(copies):
            for start in range(0, len(model), RAW_BUFFER):
                sender.sendall(model[start : start + RAW_BUFFER])
    if _answer(pipe) != len(model) * copies:
        raise RuntimeError("the receiver did not get every byte")
    return time.perf_counter() - started


def _answer(pipe: Connection) -> int:
    if not pipe.poll(TIMEOUT):
        raise RuntimeError(f"no answer from the other process within {TIMEOUT:.0f}s")
    return int(pipe.recv())


# --- floor 2: the same bytes over TLS (Python's ssl) -----------------------------------------


def receive_tls(total: int, certificate: bytes, key: bytes, pipe: Connection) -> None:
    """As ``receive``, over TLS with ``certificate`` (runs in its own process)."""
    with tempfile.TemporaryDirectory() as directory:
        cert_file, key_file = Path(directory, "cert.pem"), Path(directory, "key.pem")
        cert_file.write_bytes(certificate)
        key_file.write_bytes(key)
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(cert_file, key_file)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        pipe.send(listener.getsockname()[1])
        plain, _ = listener.accept()
    buffer = memoryview(bytearray(RAW_BUFFER))
    received = 0
    with tls.wrap_socket(plain, server_side=True) as connection:
        while received < total:
            count = connection.recv_into(buffer)
            if count == 0:
                break
            received += count
    pipe.send(received)


def tls_seconds(model: memoryview, copies: int) -> float:
    """Best seconds to send ``copies`` times ``model`` to another process over TLS."""
    ca = CertificateAuthority.create()
    certificate, key = ca.issue_server_certificate(["localhost"], ["127.0.0.1"])
    tls = ssl.create_default_context(cadata=ca.ca_pem.decode())
    best = float("inf")
    for _ in range(REPEATS):
        ours, theirs = SPAWN.Pipe()
        args = (len(model) * copies, certificate, key, theirs)
        receiver = SPAWN.Process(target=receive_tls, args=args)
        receiver.start()
        try:
            best = min(best, _send_tls(model, copies, tls, ours))
        finally:
            receiver.kill()
            receiver.join()
    return best


def _send_tls(model: memoryview, copies: int, tls: ssl.SSLContext, pipe: Connection) -> float:
    plain = socket.create_connection(("127.0.0.1", _answer(pipe)))
    with tls.wrap_socket(plain, server_hostname="localhost") as sender:
        started = time.perf_counter()
        for _ in range(copies):
            for start in range(0, len(model), RAW_BUFFER):
                sender.sendall(model[start : start + RAW_BUFFER])
        if _answer(pipe) != len(model) * copies:
            raise RuntimeError("the TLS receiver did not get every byte")
        return time.perf_counter() - started


# --- floor 3: the same bytes over gRPC with TLS, without pollinate ---------------------------


def serve_grpc(certificate: bytes, key: bytes, pipe: Connection) -> None:
    """A gRPC server (TLS) whose one method counts the bytes streamed to it; says its port,
    then serves until killed (runs in its own process)."""

    def count(chunks: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        return str(sum(len(chunk) for chunk in chunks)).encode()

    handlers = {"Count": grpc.stream_unary_rpc_method_handler(count)}
    server = grpc.server(ThreadPoolExecutor(4))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench", handlers),))
    tls = grpc.ssl_server_credentials([(key, certificate)])
    pipe.send(server.add_secure_port("127.0.0.1:0", tls))
    server.start()
    server.wait_for_termination()


def grpc_seconds(model: memoryview, copies: int) -> float:
    """Best seconds to stream ``copies`` times ``model`` to another process, one gRPC call per
    copy, in messages of ``CHUNK_BYTES`` as bytes (a copy each, as a gRPC sender makes)."""
    ca = CertificateAuthority.create()
    certificate, key = ca.issue_server_certificate(["localhost"], ["127.0.0.1"])
    ours, theirs = SPAWN.Pipe()
    server = SPAWN.Process(target=serve_grpc, args=(certificate, key, theirs))
    server.start()
    try:
        address = f"127.0.0.1:{_answer(ours)}"
        with grpc.secure_channel(address, grpc.ssl_channel_credentials(ca.ca_pem)) as channel:
            push = channel.stream_unary("/bench/Count")
            return min(_stream(push, model, copies) for _ in range(REPEATS))
    finally:
        server.kill()
        server.join()


def _stream(push: grpc.StreamUnaryMultiCallable, model: memoryview, copies: int) -> float:
    started = time.perf_counter()
    for _ in range(copies):
        chunks = (bytes(model[s : s + CHUNK_BYTES]) for s in range(0, len(model), CHUNK_BYTES))
        if int(push(chunks, timeout=TIMEOUT)) != len(model):
            raise RuntimeError("the gRPC server did not get every byte")
    return time.perf_counter() - started


# --- one configuration, and the machine ------------------------------------------------------


def measure(k: int, p: int, screen: str) -> Figures:
    with tempfile.TemporaryDirectory(prefix="pollinate-bench-") as directory:
        figures = deployment(k, p, screen, Path(directory))
    model = np.ones(p, np.float32).data.cast("B")
    return dataclasses.replace(
        figures,
        raw_seconds=raw_seconds(model, 2 * k),
        tls_seconds=tls_seconds(model, 2 * k),
        grpc_seconds=grpc_seconds(model, 2 * k),
    )


def estimated_memory(k: int, p: int) -> float:
    replies = min(k * 4 * p, max(FLOOR_BYTES, UPLOADS_AT_ONCE * 4 * p))
    models = HUB_MODELS + k + NODE_MODELS * k + k  # hub, its tasks, nodes, screened updates
    return float(models * 4 * p + replies + (k + 2) * PROCESS_BYTES)


def _fill_fresh(nbytes: int) -> float:
    started = time.perf_counter()
    np.ones(nbytes // 4, np.float32)
    return nbytes / (time.perf_counter() - started) / 1e9


def fresh_memory_rate(nbytes: int = 10**9) -> float:
    """GB/s at which a new process fills a new array (page faults included)."""
    with SPAWN.Pool(1) as pool:
        return float(pool.apply(_fill_fresh, (nbytes,)))


# --- report ----------------------------------------------------------------------------------

HEADER = (
    f"{'K':>3} {'P':>7} {'screen':>6} {'model MB':>8} {'round s':>8} {'median s':>8} {'raw s':>7} "
    f"{'ratio':>6} {'tls s':>7} {'round/tls':>9} {'grpc s':>7} {'grpc/raw':>8} "
    f"{'hub cpu s':>9} {'nodes cpu s':>11} "
    f"{'hub growth MB':>13} {'x model':>7} {'node peak MB':>12} {'x model':>7} "
    f"{'run peak MB':>11} {'x model':>7}"
)


def row(f: Figures) -> str:
    model = f.model_bytes / 1e6
    hub, node, run = f.hub_growth / 1e6, f.node_peak / 1e6, f.run_peak / 1e6
    return (
        f"{f.k:>3} {f.p:>7.1e} {f.screen:>6} {model:>8.0f} {min(f.round_seconds):>8.3f} "
        f"{statistics.median(f.round_seconds):>8.3f} {f.raw_seconds:>7.3f} {f.ratio():>5.1f}x "
        f"{f.tls_seconds:>7.3f} {f.tls_ratio():>8.1f}x "
        f"{f.grpc_seconds:>7.3f} {f.grpc_seconds / f.raw_seconds:>7.1f}x "
        f"{f.hub_cpu / ROUNDS:>9.2f} {f.nodes_cpu / ROUNDS:>11.2f} "
        f"{hub:>13.0f} {hub / model:>7.1f} {node:>12.0f} {node / model:>7.1f} "
        f"{run:>11.0f} {run / model:>7.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="K = 2, P = 1e6 only")
    parser.add_argument("--nodes", type=int, nargs="+", default=[2, 10], help="values of K")
    parser.add_argument(
        "--parameters", type=float, nargs="+", default=[1e6, 1e7, 2.5e8], help="values of P"
    )
    parser.add_argument(
        "--screen",
        nargs="+",
        choices=["on", "off"],
        default=["on", "off"],
        help="on: the default Validation (updates kept side by side); off: streaming",
    )
    args = parser.parse_args()
    ks, ps = ([2], [10**6]) if args.quick else (args.nodes, [int(p) for p in args.parameters])
    print(f"fresh memory (a new process fills a new 1 GB array): {fresh_memory_rate():.2f} GB/s")
    print("ratio = median round / raw, round/tls = median round / tls; raw, tls and grpc move")
    print("the round's bytes (see the docstring)")
    print(HEADER)
    for p in ps:
        for k in ks:
            need = estimated_memory(k, p)
            if need > MEMORY_CAP:
                print(f"{k:>3} {p:>7.1e}  skipped: needs about {need / 1e9:.0f} GB (cap 16 GB)")
                continue
            for screen in args.screen:
                print(row(measure(k, p, screen)), flush=True)


if __name__ == "__main__":
    main()
