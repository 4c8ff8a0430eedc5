"""The image, for real: a hub and three nodes as podman containers, run as the chart runs them.

Every container is made from the chart itself: the test renders deploy/helm/pollinate
(tests/deploy/chart.py) for a hub release and one release per site, as docs/kubernetes.md
installs them, and turns each pod's main container into `podman run`: its args as the
command line, its security context as the user, read-only root and dropped capabilities,
its volumes as a host directory (the hub's PersistentVolumeClaim, a node's data), a tmpfs
(an emptyDir) or the demo (what the app image's init container copies in), and its
Secret-backed environment as a podman secret exported under the same name
(POLLINATE_TOKEN). One change is made, visibly: the pods here share the host's network
(podman --network host), so an address the chart binds on 0.0.0.0 is bound on 127.0.0.1.

What it shows: the nodes enrol over mTLS with one multi-use join token made by the hub's
admin credential inside the hub container; their probes answer ready; a user on the host
submits the demo; the hub container is killed with SIGKILL once the run's log shows round 2
and started again on its volume; the run resumes after its last completed round, says so,
and ends above 0.90 accuracy.

The image is built by `make image` (deploy/image.sh), once per content hash of what it is
built from: a second run reuses it. Here no registry is reachable, so its base is built from
Debian's packages (BASE, default localhost/pollinate-base:bookworm; POLLINATE_IMAGE_BASE
overrides it). Podman runs with runc (crun fails on this kernel's cgroups) and bounded
ulimits, as docs/kubernetes.md says. Run alone: pytest -m image.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pollinate.loop.history import History
from tests.deploy.chart import pod, render
from tests.deployment.conftest import ENV, QUICKSTART, ROOT, free_ports, wait_for

pytestmark = [pytest.mark.image, pytest.mark.timeout(1800)]

PODMAN = ["podman", "--runtime", "runc"]
# What the chart leaves to the cluster, as this machine needs it (docs/kubernetes.md).
HOST = ["--network=host", "--pull=never", "--ulimit=nofile=1024:1024", "--ulimit=nproc=1024:1024"]
BASE = os.environ.get("POLLINATE_IMAGE_BASE", "localhost/pollinate-base:bookworm")
BUILD_TIMEOUT = 1500.0
TMPFS = "tmpfs"  # a volume given as this is an emptyDir: a tmpfs of its sizeLimit
NODES = 3
# Enough rounds, each with enough local work (about 0.3 s a round here), that the run is
# still going when the hub is killed after round 2.
ROUNDS = 12
RUN_CONFIG = ("--config", "local-epochs=50")


def podman(*args: str, timeout: float = 120.0, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PODMAN, *args], input=stdin, capture_output=True, text=True, timeout=timeout, check=False
    )


def get(address: str, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except OSError as error:
        return 0, str(error)


def on_loopback(args: list[str]) -> list[str]:
    """The chart's args with its wildcard binds on loopback: a pod's 0.0.0.0 is its own
    network namespace; these containers share the host's."""
    return [a.replace("=0.0.0.0:", "=127.0.0.1:") for a in args]


def podman_options(
    spec: dict[str, Any], volumes: dict[str, str], secret: dict[str, str]
) -> list[str]:
    """`podman run` options for a rendered pod's main container, as a kubelet applies its
    security context, volumes and Secret-backed environment. ``volumes`` maps the pod's
    volume names to a host path or TMPFS, ``secret`` the Secrets' names to podman secrets;
    a volume or Secret the test does not provide is a KeyError."""
    main = spec["containers"][0]
    context = {**spec["securityContext"], **main["securityContext"]}
    assert context["runAsNonRoot"] and context["runAsUser"] != 0
    options = [f"--user={context['runAsUser']}:{context['runAsGroup']}"]
    if context["readOnlyRootFilesystem"]:
        options.append("--read-only")
    options += [f"--cap-drop={name}" for name in context["capabilities"]["drop"]]
    if not context["allowPrivilegeEscalation"]:
        options.append("--security-opt=no-new-privileges")
    sizes = {v["name"]: v.get("emptyDir", {}).get("sizeLimit", "512Mi") for v in spec["volumes"]}
    for mount in main["volumeMounts"]:
        source, target = volumes[mount["name"]], mount["mountPath"]
        if source == TMPFS:
            size = sizes.get(mount["name"], "512Mi").removesuffix("i").lower()
            options.append(f"--tmpfs={target}:rw,size={size}")
        else:
            options.append(f"--volume={source}:{target}{':ro' if mount.get('readOnly') else ''}")
    for variable in main.get("env", []):
        reference = variable["valueFrom"]["secretKeyRef"]
        options.append(f"--secret={secret[reference['name']]},type=env,target={variable['name']}")
    return options


@dataclass
class Containers:
    """The containers and secrets a test made, removed at the end; logs for a failure."""

    image: str
    directory: Path
    prefix: str = field(default_factory=lambda: f"pollinate-test-{secrets.token_hex(4)}")
    names: list[str] = field(default_factory=list)
    secrets: list[str] = field(default_factory=list)

    def volume(self, name: str) -> str:
        """A host directory the image's user owns, as fsGroup makes a volume writable."""
        path = self.directory / name
        path.mkdir(exist_ok=True)
        os.chown(path, 10001, 10001)
        return str(path)

    def secret(self, name: str, value: str) -> str:
        full = f"{self.prefix}-{name}"
        done = podman("secret", "create", full, "-", stdin=value)
        assert done.returncode == 0, done.stderr
        self.secrets.append(full)
        return full

    def start(self, name: str, options: list[str], args: list[str]) -> str:
        full = f"{self.prefix}-{name}"
        done = podman("run", "--detach", f"--name={full}", *HOST, *options, self.image, *args)
        assert done.returncode == 0, done.stderr
        self.names.append(full)
        return full

    def kill(self, name: str) -> None:
        """SIGKILL, as a node that loses power or a kubelet out of patience does."""
        podman("kill", "--signal=KILL", name)
        podman("wait", name)
        podman("rm", "--force", name)
        self.names.remove(name)

    def logs(self, name: str) -> str:
        done = podman("logs", name)
        return done.stdout + done.stderr

    def close(self) -> None:
        for name in self.names:
            podman("rm", "--force", "--time=2", name)
        for name in self.secrets:
            podman("secret", "rm", name)


@pytest.fixture(scope="module")
def image() -> str:
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed on this machine (`make system-deps` installs it)")
    done = subprocess.run(
        ["make", "-s", "image", f"BASE={BASE}", f"PYTHON={sys.executable}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
        env=ENV,
    )
    assert done.returncode == 0, f"`make image` failed:\n{done.stdout}\n{done.stderr[-5000:]}"
    return done.stdout.strip().splitlines()[-1]


@pytest.fixture
def containers(image: str, tmp_path: Path) -> Iterator[Containers]:
    opened = Containers(image, tmp_path)
    try:
        yield opened
    except BaseException:
        for name in opened.names:
            print(f"===== {name}\n{opened.logs(name)}")
        raise
    finally:
        opened.close()


def hub_pod(port: int, metrics: int) -> dict[str, Any]:
    """The hub's pod as `helm install pol deploy/helm/pollinate -n fl` makes it."""
    values = {"hub": {"port": port, "metrics": {"port": metrics}}}
    return pod(render(values, name="pol", namespace="fl"), "StatefulSet")


def site_pod(site: int, hub: str, health: int) -> dict[str, Any]:
    """Site ``site``'s node pod: a release of its own (no hub) dialling ``hub``, with the
    app from an app image and the join token from the Secret pollinate-join-token."""
    values = {
        "hub": {"enabled": False},
        "nodes": {
            "hub": {"address": hub},
            "healthPort": health,
            "app": {"image": "registry.example.com/quickstart-numpy:1"},
            "pools": [
                {
                    "name": "demo",
                    "labels": {"site": f"s{site}"},
                    "nodeConfig": {"partition-id": str(site), "num-partitions": str(NODES)},
                }
            ],
        },
    }
    return pod(render(values, name=f"site{site}", namespace=f"site{site}"), "Deployment")


def start_hub(containers: Containers, spec: dict[str, Any], data: str, metrics: str) -> str:
    options = podman_options(spec, {"data": data, "tmp": TMPFS}, {})
    hub = containers.start("hub", options, on_loopback(spec["containers"][0]["args"]))
    wait_for(lambda: get(metrics, "/readyz") == (200, "ok\n"), "the hub container ready", 90)
    return hub


def run_status(data: str, run_id: str) -> tuple[str, int]:
    """(status, last completed round) of a run, from the hub's database on its volume."""
    db = sqlite3.connect(f"file:{data}/hub.db?mode=ro", uri=True)
    try:
        row = db.execute("SELECT status, round FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    finally:
        db.close()
    return (str(row[0]), int(row[1])) if row else ("", -1)


def last_round(log: str) -> int:
    return max((int(n) for n in re.findall(r"^round\s+(\d+)\s", log, re.MULTILINE)), default=-1)


def test_a_hub_and_three_nodes_as_the_chart_runs_them_train_the_demo_through_a_hub_crash(
    containers: Containers,
) -> None:
    port, metrics_port, *health_ports = free_ports(2 + NODES)
    address, metrics = f"127.0.0.1:{port}", f"127.0.0.1:{metrics_port}"
    hub_spec = hub_pod(port, metrics_port)
    hub_data = containers.volume("hub")
    hub = start_hub(containers, hub_spec, hub_data, metrics)
    assert get(metrics, "/healthz") == (200, "ok\n")

    # the admin makes a token in the hub container, with the credential the hub wrote, and
    # stores it as the Secret the node pods read
    made = podman(
        "exec", hub, "pollinate", "token", "create", f"--hub={address}",
        "--credentials=/data/admin", "--project=default", f"--uses={NODES}", "--ttl=600",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert re.fullmatch(r"pln1\.\S+", token), made.stdout
    secret = {"pollinate-join-token": containers.secret("pollinate-join-token", token)}

    nodes, healths = [], []
    for site, health_port in enumerate(health_ports):
        spec = site_pod(site, address, health_port)
        args = spec["containers"][0]["args"]
        assert f"--health-address=0.0.0.0:{health_port}" in args
        volumes = {"data": containers.volume(f"node-{site}"), "tmp": TMPFS, "app": str(QUICKSTART)}
        options = podman_options(spec, volumes, secret)
        assert any(o.endswith(",type=env,target=POLLINATE_TOKEN") for o in options)
        nodes.append(containers.start(f"node-{site}", options, on_loopback(args)))
        healths.append(f"127.0.0.1:{health_port}")
    for node, health in zip(nodes, healths, strict=True):
        wait_for(lambda n=node: "connected as node" in containers.logs(n), f"{node} to connect")
        assert "enrolled as node" in containers.logs(node)  # mTLS from here on
        wait_for(lambda h=health: get(h, "/readyz") == (200, "ok\n"), f"{node} ready", 60)
        assert get(health, "/healthz") == (200, "ok\n")
        command_line = podman("exec", node, "cat", "/proc/1/cmdline").stdout
        assert "--hub=" in command_line and token not in command_line

    # a user on the host submits the demo with the admin credential
    out = containers.directory / "out"
    log_path = containers.directory / "run.log"
    with log_path.open("w") as log:
        run = subprocess.Popen(
            [sys.executable, "-m", "pollinate", "run", str(QUICKSTART), "--hub", address,
             "--credentials", f"{hub_data}/admin", "--rounds", str(ROUNDS), *RUN_CONFIG,
             "--out", str(out)],
            stdout=log, stderr=subprocess.STDOUT, text=True, env=ENV, cwd=containers.directory,
        )  # fmt: skip
    try:
        wait_for(lambda: last_round(log_path.read_text()) >= 2, "round 2 in the run's log", 120)
        found = re.search(r"run (\w+) submitted", log_path.read_text())
        assert found, log_path.read_text()
        run_id = found.group(1)

        # SIGKILL mid-run, then the hub again on its volume: it resumes the run
        containers.kill(hub)
        killed = time.monotonic()
        status, completed = run_status(hub_data, run_id)
        assert status == "running" and completed < ROUNDS, "the kill came after the run"
        start_hub(containers, hub_spec, hub_data, metrics)
        outage = time.monotonic() - killed
        returncode = run.wait(timeout=180)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    output = log_path.read_text()
    assert returncode == 0, output
    resumed = re.search(
        rf"hub restarted \(restart 1\): run {run_id} resumes after round (\d+)", output
    )
    assert resumed and 2 <= int(resumed.group(1)) <= completed, output
    history = History.load(out).rounds
    assert [r.round for r in history] == list(range(ROUNDS + 1))
    assert any(r.resumed for r in history)
    accuracy = float(history[-1].centralized["accuracy"])
    assert accuracy >= 0.90, output
    assert run_status(hub_data, run_id) == ("finished", ROUNDS)
    for node, health in zip(nodes, healths, strict=True):  # back with the new hub
        wait_for(lambda h=health: get(h, "/readyz") == (200, "ok\n"), f"{node} ready again", 60)
    print(
        f"measured: hub killed after round {completed} of {ROUNDS}, ready again on its volume "
        f"in {outage:.1f} s; final centralized accuracy {accuracy:.3f}"
    )


def test_a_node_container_restarted_on_its_volume_keeps_its_node_id(
    containers: Containers,
) -> None:
    port, metrics_port, health_port = free_ports(3)
    address, metrics = f"127.0.0.1:{port}", f"127.0.0.1:{metrics_port}"
    hub = start_hub(containers, hub_pod(port, metrics_port), containers.volume("hub"), metrics)
    made = podman(
        "exec", hub, "pollinate", "token", "create", f"--hub={address}",
        "--credentials=/data/admin", "--uses=1", "--ttl=600",
    )  # fmt: skip
    secret = {"pollinate-join-token": containers.secret("pollinate-join-token", made.stdout)}
    spec = site_pod(0, address, health_port)
    volumes = {"data": containers.volume("node"), "tmp": TMPFS, "app": str(QUICKSTART)}
    options, args = (
        podman_options(spec, volumes, secret),
        on_loopback(spec["containers"][0]["args"]),
    )

    def node_id(name: str) -> str:
        """The node id the container connected as; fails if it exits first."""

        def connected() -> re.Match[str] | None:
            found = re.search(r"connected as node (\d+)", containers.logs(name))
            running = podman("inspect", "--format={{.State.Running}}", name).stdout.strip()
            assert found or running == "true", containers.logs(name)
            return found

        return str(wait_for(connected, f"{name} to connect").group(1))

    first = node_id(containers.start("node", options, args))
    containers.kill(containers.names[-1])  # as a kubelet restarts a container: emptyDir kept
    assert node_id(containers.start("node", options, args)) == first
