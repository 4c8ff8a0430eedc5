"""Deployment commands: ``hub``, ``node``, ``ls``, ``log``, ``stop``, and ``run --hub``."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import logging
import os
import pwd
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from pollinate.app import app_hash, load_app
from pollinate.artifacts import save_arrays
from pollinate.cli.console import (
    RUN_FAILED,
    console,
    err_console,
    fail,
    parse_overrides,
    run_failed,
    setup_logging,
)
from pollinate.cli.hubs import (
    CredentialsOption,
    HubOption,
    checked_selector,
    control_client,
    refused_hint,
    wait_for_hub,
)
from pollinate.cli.outputs import RunOutputs
from pollinate.cli.render import nothing_applied, round_lines, summary
from pollinate.dashboard import DashboardServer, serve_dashboard
from pollinate.dirlock import lock_dir
from pollinate.errors import PollinateError
from pollinate.hub.archives import pack_app
from pollinate.hub.credentials import HubCredentials
from pollinate.hub.hub import ENROL_BURST, ENROL_PER_SECOND, Hub
from pollinate.hub.members import ADMIN_DIR
from pollinate.hub.metrics import HubMetrics, MetricsServer
from pollinate.hub.rate_limit import RateLimiter
from pollinate.hub.state import RunStatus
from pollinate.hub.supervisor import DEFAULT_RUN_MEMORY, RunLimits
from pollinate.loop.history import History, RoundRecord
from pollinate.node.agent import NodeAgent
from pollinate.placement import parse_labels
from pollinate.security import NodeCredentials, SecurityError, ca_matches_pin, parse_token
from pollinate.security.certificates import node_id_from_certificate
from pollinate.text import MAX_LINE, MAX_NAME, inert
from pollinate.tracking import Tracker
from pollinate.transport.client import ControlClient, HubUnavailable, LogLine, enrol
from pollinate.transport.ports import serve

RECONNECT_PATIENCE = 600.0
"""Seconds ``run --hub`` and ``log`` wait for a hub that went away before they give up."""


def hub_command(
    data_dir: Annotated[Path, typer.Option(help="Where the hub keeps its state (created).")],
    address: Annotated[
        str,
        typer.Option(
            metavar="HOST:PORT",
            help="The hub's one address: nodes, users and newcomers with a token (TLS).",
        ),
    ] = "0.0.0.0:9092",
    hostname: Annotated[
        list[str] | None,
        typer.Option(help="A name nodes use to reach the hub (certificate SAN); repeatable."),
    ] = None,
    cert_lifetime: Annotated[
        int, typer.Option(help="Seconds a node certificate lives; nodes renew at 2/3.")
    ] = 86400,
    insecure: Annotated[
        bool, typer.Option(help="No TLS: for local experiments only. Anyone can join.")
    ] = False,
    heartbeat_timeout: Annotated[
        float, typer.Option(help="Seconds of silence after which a node's tasks fail.")
    ] = 30.0,
    enrol_burst: Annotated[
        int, typer.Option(min=1, help="Enrolment attempts one address may make at once.")
    ] = ENROL_BURST,
    enrol_rate: Annotated[
        float, typer.Option(min=0.001, help="Enrolment attempts an address earns back a second.")
    ] = ENROL_PER_SECOND,
    run_memory: Annotated[
        float,
        typer.Option(min=0, help="GiB of memory each run's server process may use (0: no bound)."),
    ] = DEFAULT_RUN_MEMORY / 2**30,
    run_as_user: Annotated[
        str | None,
        typer.Option(
            metavar="USER",
            help="Run each run's server code as this OS user (the hub must run as root): "
            "another user's files and processes are out of its reach too [default: the "
            "hub's user].",
        ),
    ] = None,
    metrics_address: Annotated[
        str,
        typer.Option(
            metavar="HOST:PORT",
            help="Where to serve Prometheus metrics at /metrics (port 0: a free one; "
            "keep it on loopback or a monitoring network).",
        ),
    ] = "127.0.0.1:0",
    dashboard_address: Annotated[
        str,
        typer.Option(
            metavar="HOST:PORT",
            help="Where to serve the web dashboard (port 0: a free one); the hub prints a "
            "one-time login link (keep it on loopback, or reach it through an SSH tunnel).",
        ),
    ] = "127.0.0.1:0",
) -> None:
    """Start a hub: nodes enrol and connect to it, users drive runs through it, all at
    --address. At its first start it writes an admin credential to DATA_DIR/admin."""
    setup_logging(True)
    _check_run_user(run_as_user)
    credentials = None
    if insecure:
        err_console.print(
            Text(
                "WARNING: --insecure: no TLS, no authentication. Anyone who can "
                f"reach {address} can join this fleet and read its models. Local experiments "
                "only.",
                "bold yellow",
            )
        )
    try:
        if not insecure:
            host = address.rpartition(":")[0]
            ips = ["127.0.0.1"] + ([host] if _is_ip(host) and host != "0.0.0.0" else [])
            names = ["localhost", *(hostname or [])] + ([] if _is_ip(host) else [host])
            credentials = HubCredentials.load_or_create(_mkdir(data_dir), names, ips, cert_lifetime)
        hub = Hub(
            data_dir,
            heartbeat_timeout=heartbeat_timeout,
            heartbeat_interval=max(heartbeat_timeout / 6, 0.2),
            credentials=credentials,
            enrol_limit=RateLimiter(enrol_burst, enrol_rate),
            run_limits=RunLimits(memory=int(run_memory * 2**30), user=run_as_user),
        )
    except (PollinateError, OSError) as exc:
        raise fail(
            PollinateError(
                f"the hub cannot start on its data dir {data_dir}: {exc}.\nHint: the data dir "
                "must be writable when the hub starts (it creates its database and CA there)."
            )
        ) from None
    dashboard = _serve_dashboard(hub, dashboard_address)
    servers = serve(hub, address, dashboard_link=dashboard.login_link)
    metrics = _serve_metrics(hub, metrics_address)
    hub.start()
    console.print(
        f"hub serving on port {servers.port}, metrics on port {metrics.port}, state in {data_dir}"
    )
    if credentials is not None:
        admin = (data_dir / ADMIN_DIR).resolve()
        console.print(
            Text(f"admin credential: {admin} (export POLLINATE_CREDENTIALS={admin})"),
            soft_wrap=True,
        )
    console.print(f"dashboard: {dashboard.login_link()} (a one-time login link)", soft_wrap=True)
    stop = threading.Event()
    _on_signal(stop.set)
    stop.wait()
    servers.stop()
    metrics.stop()
    dashboard.stop()
    hub.close()


def _check_run_user(user: str | None) -> None:
    if user is None:
        return
    try:
        pwd.getpwnam(user)
    except KeyError:
        raise fail(
            f"--run-as-user: there is no OS user {user!r}.\nHint: create one for run code "
            "(`useradd --system --no-create-home pollinate-run`)"
        ) from None
    if os.geteuid() != 0:
        raise fail("--run-as-user needs a hub started as root (it switches run processes to it)")


def _serve_metrics(hub: Hub, address: str) -> MetricsServer:
    try:
        return HubMetrics(hub).serve(address)
    except (OSError, ValueError) as exc:
        raise fail(
            PollinateError(
                f"the hub cannot serve metrics on {address!r}: {exc}.\nHint: "
                "--metrics-address 127.0.0.1:9464 (a free port; 0 picks one)."
            )
        ) from None


def _serve_dashboard(hub: Hub, address: str) -> DashboardServer:
    try:
        return serve_dashboard(hub, address)
    except (OSError, ValueError) as exc:
        raise fail(
            PollinateError(
                f"the hub cannot serve its dashboard on {address!r}: {exc}.\nHint: "
                "--dashboard-address 127.0.0.1:8080 (a free port; 0 picks one)."
            )
        ) from None


def node_command(
    context: typer.Context,
    hub: Annotated[
        str | None,
        typer.Option(
            "--hub", metavar="HOST:PORT", envvar="POLLINATE_HUB", help="The hub's address."
        ),
    ] = None,
    app_dir: Annotated[
        list[Path] | None,
        typer.Option(
            "--app", help="An app directory this node serves; repeatable (one node, several apps)."
        ),
    ] = None,
    node_config: Annotated[
        list[str] | None,
        typer.Option(
            metavar="KEY=VALUE",
            help="Node config, e.g. partition-id=0 num-partitions=3; repeatable.",
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="POLLINATE_TOKEN",
            help="A join token from `pollinate token create` (from the environment, it "
            "stays out of the process list).",
        ),
    ] = None,
    data_dir: Annotated[
        Path, typer.Option(help="Where the node keeps its key and certificate.")
    ] = Path(".pollinate-node"),
    name: Annotated[str, typer.Option(help="Stable node name (insecure mode).")] = "",
    label: Annotated[
        list[str] | None,
        typer.Option(
            metavar="KEY=VALUE",
            help="A label runs select on, e.g. region=eu; repeatable (docs/placement.md).",
        ),
    ] = None,
    resources: Annotated[
        list[str] | None,
        typer.Option(
            metavar="KEY=VALUE",
            help="A resource stated by hand where detection cannot see it, e.g. gpus=2; "
            "overrides the detected one; repeatable.",
        ),
    ] = None,
    health_address: Annotated[
        str | None,
        typer.Option(
            metavar="HOST:PORT",
            help="Serve /healthz and /readyz here (ready: enrolled, heard by the hub, app "
            "loaded), for Kubernetes probes [default: none].",
        ),
    ] = None,
    insecure: Annotated[bool, typer.Option(help="No TLS: local experiments only.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Start a node: it dials out to the hub and trains the app's client on local data
    (--hub and --app); or manage nodes at the hub (the commands below)."""
    if context.invoked_subcommand is not None:
        return
    if hub is None or not app_dir:
        raise fail(
            "a node needs --hub and --app.\nHint: pollinate node --hub HOST:9092 --app APP_DIR "
            "--token TOKEN (`pollinate node --help` lists the rest)"
        )
    setup_logging(verbose)
    logging.getLogger("pollinate.node.state").setLevel(logging.INFO)  # one line per change
    try:
        overrides = parse_overrides(node_config or [])
        labels, stated = parse_labels(label or []), parse_labels(resources or [], "resources")
    except ValueError as exc:
        raise fail(exc) from None
    try:
        credentials = None
        if insecure:
            err_console.print(
                Text(
                    "WARNING: --insecure: this node talks to the hub without TLS. Local "
                    "experiments only.",
                    "bold yellow",
                )
            )
        else:
            # held until the process ends: two nodes on one data dir would share an identity
            lock_dir(_mkdir(data_dir), "node", "--data-dir")
            credentials = _node_credentials(data_dir, token, hub)
        agent = NodeAgent(
            hub,
            app_dir,
            overrides,
            name=name or _default_name(overrides),
            credentials=credentials,
            credentials_dir=data_dir,
            labels=labels,
            resources=stated,
            health_address=health_address,
        )
        if agent.health_port is not None:
            err_console.print(f"health: /healthz and /readyz on port {agent.health_port}")
        _on_signal(agent.shutdown)
        agent.run()
    except (PollinateError, ValueError) as exc:
        raise fail(exc) from None
    except OSError as exc:  # the health address is taken, or not this machine's
        raise fail(f"--health-address {health_address}: {exc}") from None


token_app = typer.Typer(help="Join tokens for new nodes.", no_args_is_help=True)


@token_app.command("create")
def token_create(
    hub: HubOption = None,
    credentials: CredentialsOption = None,
    project: Annotated[
        list[str] | None,
        typer.Option(
            metavar="PROJECT",
            help="A project whose runs the nodes serve; repeatable [default: default].",
        ),
    ] = None,
    uses: Annotated[
        int, typer.Option(min=1, help="Nodes the token may enrol (many: automated roll-outs).")
    ] = 1,
    ttl: Annotated[float, typer.Option(help="Seconds until the token expires.")] = 3600.0,
) -> None:
    """Print a join token (admins); a node starts with --token TOKEN to enrol."""
    try:
        client = control_client(hub, credentials)
        token, expires = client.create_token(ttl, project or None, uses)
    except PollinateError as exc:
        raise fail(refused_hint(exc, hub, credentials)) from None
    until = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(expires))
    what = "one-time join token" if uses == 1 else f"join token for {uses} nodes"
    err_console.print(f"{what}, valid until {until}:")
    print(token)


def _node_credentials(data_dir: Path, token: str | None, hub: str) -> NodeCredentials:
    """The node's saved credentials, or new ones from ``token``. A token is spent only when
    there are none, they expired, or the token is from another hub than they are (its pin
    does not match their enrolment certificate): a node restarted with the token it was
    started with (a container's environment) keeps its identity."""
    saved = NodeCredentials.load(data_dir)
    fresh = token is not None and saved is not None and not saved.expired()
    if saved is not None and (token is None or (fresh and _same_hub(saved, token))):
        saved.check_not_expired()  # says how to enrol again if it expired
        return saved
    if token is None:
        raise SecurityError(
            f"this node has no certificate in {data_dir}.\nHint: create a token on the hub "
            "(`pollinate token create`) and start the node with --token TOKEN."
        )
    wait_for_hub(hub)
    credentials = enrol(hub, token)
    credentials.save(data_dir)
    node = node_id_from_certificate(credentials.cert_pem)
    err_console.print(Text(f"enrolled as node {node}; certificate saved in {data_dir}"))
    return credentials


def _same_hub(saved: NodeCredentials, token: str) -> bool:
    try:
        return ca_matches_pin(saved.enrol_pem, parse_token(token).ca_pin)
    except SecurityError:
        return False  # a malformed token: enrol() says what is wrong with it


def ls_command(
    hub: HubOption = None,
    credentials: CredentialsOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON list, for scripts.")] = False,
) -> None:
    """List the runs you may see (your projects'; an admin's: all) with their status."""
    try:
        runs = control_client(hub, credentials).list_runs()
    except PollinateError as exc:
        raise fail(refused_hint(exc, hub, credentials)) from None
    if as_json:  # json.dumps escapes what a hub sent: the output stays one JSON document
        print(json.dumps([dataclasses.asdict(r) for r in runs], indent=2))
        return
    table = Table("run", "project", "app", "status", "round", "created", "detail")
    for r in runs:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.created))
        # what a hub says (a run's app name, why it failed) is shown as text, never markup
        table.add_row(
            *(Text(inert(v, MAX_NAME)) for v in (r.run_id, r.project, r.app, r.status)),
            f"{r.round}/{'?' if r.rounds is None else r.rounds}",
            created,
            Text(inert(r.detail, MAX_LINE)),
        )
    console.print(table)


def log_command(
    run_id: Annotated[str, typer.Argument(help="The run, as `pollinate ls` shows it.")],
    hub: HubOption = None,
    credentials: CredentialsOption = None,
    follow: Annotated[bool, typer.Option(help="Keep following until the run ends.")] = True,
) -> None:
    """Replay a run's log, then follow it until the run ends."""
    try:
        client = control_client(hub, credentials)
        for line in follow_run(client, run_id, follow):
            _print_line(line.kind, line.text)
    except PollinateError as exc:
        raise fail(refused_hint(exc, hub, credentials)) from None


def stop_command(
    run_id: Annotated[str, typer.Argument(help="The run to stop.")],
    hub: HubOption = None,
    credentials: CredentialsOption = None,
) -> None:
    """Stop a running run (members and admins of its project)."""
    try:
        control_client(hub, credentials).stop_run(run_id)
    except PollinateError as exc:
        raise fail(refused_hint(exc, hub, credentials)) from None
    console.print(f"run {run_id} stopping")


def pull_command(
    run_id: Annotated[str, typer.Argument(help="The run, as `pollinate ls` shows it.")],
    out: Annotated[Path, typer.Option(help="Directory to write model.npz into (created).")],
    round_: Annotated[
        int | None,
        typer.Option("--round", min=0, help="The round whose model to pull [default: the last]."),
    ] = None,
    hub: HubOption = None,
    credentials: CredentialsOption = None,
) -> None:
    """Save a run's model from the hub as DIR/model.npz (docs/artifacts.md): the newest round
    that ended, or --round R. Whoever may read the run may pull it."""
    try:
        pulled, arrays = control_client(hub, credentials).pull_model(run_id, round_)
        path = save_arrays(arrays, _mkdir(out) / "model.npz")
    except PollinateError as exc:
        raise fail(refused_hint(exc, hub, credentials)) from None
    except OSError as exc:
        raise fail(f"cannot write the model into {out}: {exc}") from None
    console.print(Text(f"run {inert(run_id, MAX_NAME)} round {pulled}: model written to {path}"))


def run_on_hub(
    app_dir: Path,
    hub: str,
    overrides: dict[str, str],
    rounds: int | None,
    seed: int,
    out: Path | None,
    select: str | None = None,
    *,
    project: str = "",
    credentials: Path | None = None,
    nodes: tuple[int, int] = (0, 0),
    trackers: Sequence[Tracker] = (),
) -> None:
    """Submit the app to the hub's ``project`` and stream its rounds until the run ends;
    ``select`` (else the app's ``[tool.pollinate] select``) picks the nodes it may use, at
    least ``nodes[0]`` and at most ``nodes[1]`` of them (0: no bound). The history goes to
    ``out`` as rounds end, the final model once the run finished, both to ``trackers`` too."""
    try:  # a mistake in the app or its selector is told at once, not after the hub is found
        loaded = load_app(app_dir, overrides)
    except PollinateError as exc:
        raise fail(exc) from None
    selector = checked_selector(loaded.select if select is None else select)
    started = time.monotonic()
    try:
        client = control_client(hub, credentials)
        digest = app_hash(app_dir)
        run_id = client.submit_run(
            pack_app(app_dir), digest, overrides, rounds, seed, selector, project, nodes
        )
        console.print(Text.assemble((loaded.name, "bold"), f": run {run_id} submitted to {hub}"))
        history = History(
            app=loaded.name,
            seed=seed,
            config=dict(loaded.config),
            app_hash=digest,
            overrides=dict(overrides),
            num_rounds=rounds,
            placement=selector or None,
            run_id=run_id,
        )
        outputs = RunOutputs(history, out, trackers)  # the header, at once
        try:
            for line in follow_run(client, run_id, follow=True):
                _print_line(line.kind, line.text)
                if line.kind == "round":
                    outputs.add(RoundRecord.from_dict(json.loads(line.text)))
        except KeyboardInterrupt:
            outputs.finish(None, "interrupted")
            err_console.print(
                Text(
                    f"stopped following; run {run_id} goes on at the hub (`pollinate log "
                    f"{run_id}` follows it, `pollinate stop {run_id}` stops it)",
                    "yellow",
                )
            )
            raise typer.Exit(130) from None
        status = _status(client, run_id)
        finished = status is RunStatus.FINISHED
        arrays = client.pull_model(run_id)[1] if finished and (out or trackers) else None
        outputs.finish(arrays, "finished" if finished else "failed")
    except PollinateError as exc:
        raise fail(refused_hint(exc, hub, credentials)) from None
    for summary_line in summary(outputs.history, time.monotonic() - started):
        console.print(summary_line)
    if outputs.writer is not None:
        console.print(Text(f"history written to {outputs.writer.path}"))
    if outputs.model is not None:
        console.print(Text(f"model written to {outputs.model}"))
    problem = nothing_applied(outputs.history)
    if problem is not None:
        raise run_failed(problem)
    if not finished:
        raise typer.Exit(RUN_FAILED)


def follow_run(client: ControlClient, run_id: str, follow: bool) -> Iterator[LogLine]:
    """The run's log, line by line, until the run ends (``follow``) or the log does.

    A hub that goes away mid-run (a restart) is waited for, up to ``RECONNECT_PATIENCE``
    seconds, and the log picked up after the last line shown: nothing twice, nothing missed.
    """
    after, away_since = 0, None
    while True:
        try:
            for line in client.follow_log(run_id, follow=follow, after=after):
                after, away_since = line.seq, None
                yield line
            if not follow or _ended(client, run_id):
                return
        except HubUnavailable as exc:
            if away_since is None:
                away_since = time.monotonic()
                waiting = f"{exc}; waiting for the hub to come back..."
                err_console.print(Text(inert(waiting, MAX_LINE), "yellow"))
            elif time.monotonic() - away_since > RECONNECT_PATIENCE:
                raise HubUnavailable(
                    f"{exc}; gave up after {RECONNECT_PATIENCE:g}s.\nHint: the run goes on "
                    f"when the hub is back; `pollinate log {run_id}` shows it then."
                ) from None
        time.sleep(1.0)


def _ended(client: ControlClient, run_id: str) -> bool:
    """The run is over (a log stream can also end because its hub is shutting down)."""
    return _status(client, run_id) not in (None, RunStatus.RUNNING)


def _status(client: ControlClient, run_id: str) -> RunStatus | None:
    """The run's status as its hub lists it; None if the hub lists no such run."""
    found = [r.status for r in client.list_runs() if r.run_id == run_id]
    return found[0] if found else None


def _print_line(kind: str, text: str) -> None:
    """One line of a run's log, as plain text: it quotes nodes (their errors, metric names)."""
    if kind == "round":
        for line in round_lines(RoundRecord.from_dict(json.loads(text))):
            console.print(line)
        return
    style = {"status": "bold", "resume": "bold yellow"}.get(kind, "dim")
    console.print(Text(inert(text, MAX_LINE), style))


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _default_name(config: dict[str, str]) -> str:
    """Insecure mode names a node; a restarted node with the same name keeps its id."""
    if "partition-id" in config:
        return f"partition-{config['partition-id']}"
    return f"{socket.gethostname()}-{os.getpid()}"


def _on_signal(callback: Callable[[], None]) -> None:
    """Call ``callback`` on SIGINT or SIGTERM: a clean stop, not a traceback."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: callback())
