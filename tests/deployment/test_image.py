"""The image, for real: a hub and two nodes as podman containers, run as the chart runs them.

Each container runs with a read-only root file system as uid 10001 (the image's user), its
state only in a volume (/data) and a tmpfs (/tmp), on the host's network so every connection
stays on 127.0.0.1. The nodes enrol over mTLS with a multi-use join token made by the hub's
admin credential inside the hub container; a user on the host submits the demo app with that
credential and the run finishes above 0.90 accuracy; the probes answer; and a hub killed with
SIGKILL comes back on its volume with the run still recorded.

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
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.deployment.conftest import ENV, QUICKSTART, ROOT, free_ports, wait_for

pytestmark = [pytest.mark.image, pytest.mark.timeout(1800)]

PODMAN = ["podman", "--runtime", "runc"]
RUN = [
    "--network=host",
    "--read-only",
    "--tmpfs=/tmp:rw,size=512m",
    "--ulimit=nofile=1024:1024",
    "--ulimit=nproc=1024:1024",
    "--user=10001:10001",
    "--cap-drop=ALL",
    "--security-opt=no-new-privileges",
]
BASE = os.environ.get("POLLINATE_IMAGE_BASE", "localhost/pollinate-base:bookworm")
BUILD_TIMEOUT = 1500.0


def podman(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PODMAN, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def get(address: str, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except OSError as error:
        return 0, str(error)


@dataclass
class Containers:
    """The containers a test started, removed at the end; their logs for a failure."""

    image: str
    directory: Path
    prefix: str = field(default_factory=lambda: f"pollinate-test-{secrets.token_hex(4)}")
    names: list[str] = field(default_factory=list)

    def volume(self, name: str) -> Path:
        path = self.directory / name
        path.mkdir(exist_ok=True)
        os.chown(path, 10001, 10001)  # the image's user owns its state, as fsGroup does
        return path

    def start(self, name: str, *args: str, mounts: tuple[str, ...] = ()) -> str:
        full = f"{self.prefix}-{name}"
        volumes = [f"--volume={m}" for m in mounts]
        done = podman("run", "--detach", f"--name={full}", *RUN, *volumes, self.image, *args)
        assert done.returncode == 0, done.stderr
        self.names.append(full)
        return full

    def kill(self, name: str) -> None:
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


def start_hub(containers: Containers, data: Path, address: str, metrics: str) -> str:
    """The hub as the chart starts it: one address, metrics and probes on another."""
    hub = containers.start(
        "hub",
        "hub",
        "--data-dir=/data",
        f"--address={address}",
        f"--metrics-address={metrics}",
        "--dashboard-address=127.0.0.1:0",
        "--heartbeat-timeout=10",
        mounts=(f"{data}:/data",),
    )
    wait_for(lambda: get(metrics, "/readyz") == (200, "ok\n"), "the hub container ready", 90)
    return hub


def test_a_hub_and_nodes_in_containers_train_the_demo(containers: Containers) -> None:
    address, metrics, health = (f"127.0.0.1:{port}" for port in free_ports(3))
    hub_data = containers.volume("hub")
    hub = start_hub(containers, hub_data, address, metrics)
    assert get(metrics, "/healthz") == (200, "ok\n")

    # the admin makes a token in the hub container, with the credential the hub wrote
    made = podman(
        "exec", hub, "pollinate", "token", "create", f"--hub={address}",
        "--credentials=/data/admin", "--project=default", "--uses=2", "--ttl=600",
    )  # fmt: skip
    found = re.search(r"\b(pln1\.\S+)", made.stdout)
    assert found, made.stdout + made.stderr
    token = found.group(1)

    has_health = "--health-address" in podman("run", "--rm", *RUN, containers.image,
                                              "node", "--help").stdout  # fmt: skip
    nodes = []
    for partition in range(2):
        probe = [f"--health-address={health}"] if has_health and partition == 0 else []
        nodes.append(
            containers.start(
                f"node-{partition}",
                "node",
                f"--hub={address}",
                "--app=/app",
                "--data-dir=/data",
                f"--token={token}",
                f"--label=site=s{partition}",
                f"--node-config=partition-id={partition}",
                "--node-config=num-partitions=2",
                *probe,
                mounts=(f"{containers.volume(f'node-{partition}')}:/data", f"{QUICKSTART}:/app:ro"),
            )
        )
    for node in nodes:
        wait_for(lambda n=node: "connected as node" in containers.logs(n), f"{node} to connect")
        assert "enrolled as node" in containers.logs(node)
    if has_health:
        wait_for(lambda: get(health, "/readyz") == (200, "ok\n"), "node 0 ready", 60)
        assert get(health, "/healthz") == (200, "ok\n")

    # a user on the host submits the demo with the admin credential
    out = containers.directory / "out"
    credentials = hub_data / "admin"
    done = subprocess.run(
        [sys.executable, "-m", "pollinate", "run", str(QUICKSTART), "--hub", address,
         "--credentials", str(credentials), "--config", "num-rounds=5", "--out", str(out)],
        capture_output=True, text=True, timeout=300, env=ENV, cwd=containers.directory,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    final = re.search(r"final \(round 5\):.*centralized loss \S+ accuracy (\S+)", done.stdout)
    assert final and float(final.group(1)) >= 0.90, done.stdout
    run_id = re.search(r"run (\w+) finished", done.stdout)
    assert run_id, done.stdout

    # SIGKILL, then the hub again on its volume: it starts, takes the lock, knows the run
    containers.kill(hub)
    start_hub(containers, hub_data, address, metrics)
    listed = subprocess.run(
        [sys.executable, "-m", "pollinate", "ls", "--hub", address, "--credentials",
         str(credentials)],
        capture_output=True, text=True, timeout=120, env=ENV, check=False,
    )  # fmt: skip
    assert listed.returncode == 0 and run_id.group(1) in listed.stdout, listed.stdout
    assert "finished" in listed.stdout
    if not has_health:
        pytest.xfail("the run finished; `pollinate node --health-address` is not in the CLI yet")
