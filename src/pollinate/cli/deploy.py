"""Deployment commands: ``hub``, ``node``, ``ls``, ``log``, ``stop``, and ``run --hub``."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from pollinate.app import app_hash, load_app
from pollinate.cli.main import _parse_overrides, app, console, err_console, fail, setup_logging
from pollinate.cli.render import round_line, summary_table
from pollinate.errors import PollinateError
from pollinate.hub.hub import Hub
from pollinate.hub.runs import pack_app
from pollinate.node.agent import NodeAgent
from pollinate.server.history import Failure, History, RoundRecord
from pollinate.transport.client import ControlClient
from pollinate.transport.server import serve

HubOption = Annotated[
    str, typer.Option("--hub", metavar="HOST:PORT", help="The hub's control address.")
]
DEFAULT_CONTROL = "127.0.0.1:9093"


@app.command("hub")
def hub_command(
    data_dir: Annotated[Path, typer.Option(help="Where the hub keeps its state (created).")],
    address: Annotated[
        str, typer.Option(metavar="HOST:PORT", help="Fleet API address, for nodes.")
    ] = "0.0.0.0:9092",
    control_address: Annotated[
        str, typer.Option(metavar="HOST:PORT", help="Control API address, for users.")
    ] = DEFAULT_CONTROL,
    insecure: Annotated[
        bool, typer.Option(help="No TLS: for local experiments only. Anyone can join.")
    ] = False,
    heartbeat_timeout: Annotated[
        float, typer.Option(help="Seconds of silence after which a node's tasks fail.")
    ] = 30.0,
) -> None:
    """Start a hub: nodes connect to its fleet API, users to its control API."""
    setup_logging(True)
    if not insecure:
        raise fail(
            PollinateError(
                "TLS enrolment is not available yet in this build.\n"
                "Hint: pass --insecure for a local experiment (no authentication at all)."
            )
        )
    err_console.print(
        "[bold yellow]WARNING: --insecure: no TLS, no authentication. Anyone who can reach "
        f"{address} can join this fleet and read its models. Local experiments only.[/]"
    )
    hub = Hub(
        data_dir,
        heartbeat_timeout=heartbeat_timeout,
        heartbeat_interval=max(heartbeat_timeout / 6, 0.2),
    )
    servers = serve(hub, address, control_address)
    console.print(
        f"hub serving: fleet on port {servers.fleet_port}, control on "
        f"port {servers.control_port}, state in {data_dir}"
    )
    stop = threading.Event()
    _on_signal(stop.set)
    stop.wait()
    servers.stop()
    hub.close()


@app.command("node")
def node_command(
    hub: Annotated[str, typer.Option("--hub", metavar="HOST:PORT", help="Hub fleet address.")],
    app_dir: Annotated[Path, typer.Option("--app", help="The app directory this node serves.")],
    node_config: Annotated[
        list[str] | None,
        typer.Option(
            metavar="KEY=VALUE",
            help="Node config, e.g. partition-id=0 num-partitions=3; repeatable.",
        ),
    ] = None,
    name: Annotated[str, typer.Option(help="Stable node name (insecure mode).")] = "",
    insecure: Annotated[bool, typer.Option(help="No TLS: local experiments only.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Start a node: it dials out to the hub and trains the app's client on local data."""
    setup_logging(verbose)
    if not insecure:
        raise fail(
            PollinateError(
                "TLS enrolment is not available yet in this build.\n"
                "Hint: pass --insecure for a local experiment."
            )
        )
    err_console.print(
        "[bold yellow]WARNING: --insecure: this node talks to the hub without "
        "TLS. Local experiments only.[/]"
    )
    try:
        overrides = _parse_overrides(node_config or [])
        agent = NodeAgent(hub, app_dir, overrides, name=name or _default_name(overrides))
    except PollinateError as exc:
        raise fail(exc) from None
    _on_signal(agent.stop.set)
    agent.run()


@app.command("ls")
def ls_command(hub: HubOption = DEFAULT_CONTROL) -> None:
    """List the hub's runs with their status."""
    client = ControlClient(hub)
    try:
        runs = client.list_runs()
    except PollinateError as exc:
        raise fail(exc) from None
    table = Table("run", "app", "status", "round", "created", "detail")
    for r in runs:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.created))
        table.add_row(r.run_id, r.app, r.status, f"{r.round}/{r.rounds}", created, r.detail)
    console.print(table)


@app.command("log")
def log_command(
    run_id: Annotated[str, typer.Argument(help="The run, as `pollinate ls` shows it.")],
    hub: HubOption = DEFAULT_CONTROL,
    follow: Annotated[bool, typer.Option(help="Keep following until the run ends.")] = True,
) -> None:
    """Replay a run's log, then follow it until the run ends."""
    client = ControlClient(hub)
    try:
        for line in client.follow_log(run_id, follow=follow):
            _print_line(line.kind, line.text)
    except PollinateError as exc:
        raise fail(exc) from None


@app.command("stop")
def stop_command(
    run_id: Annotated[str, typer.Argument(help="The run to stop.")],
    hub: HubOption = DEFAULT_CONTROL,
) -> None:
    """Stop a running run."""
    try:
        ControlClient(hub).stop_run(run_id)
    except PollinateError as exc:
        raise fail(exc) from None
    console.print(f"run {run_id} stopping")


def run_on_hub(
    app_dir: Path,
    hub: str,
    overrides: dict[str, str],
    rounds: int | None,
    seed: int,
    out: Path | None,
) -> None:
    """Submit the app to the hub and stream its rounds until the run ends."""
    client = ControlClient(hub)
    history = History()
    try:
        loaded = load_app(app_dir, overrides)
        run_id = client.submit_run(
            pack_app(app_dir),
            app_hash(app_dir),
            overrides,
            -1 if rounds is None else rounds,
            seed,
        )
        console.print(f"[bold]{loaded.name}[/bold]: run {run_id} submitted to {hub}")
        status = ""
        for line in client.follow_log(run_id, follow=True):
            _print_line(line.kind, line.text)
            if line.kind == "round":
                history.rounds.append(_record(json.loads(line.text)))
            if line.kind == "status":
                status = line.text
    except PollinateError as exc:
        raise fail(exc) from None
    console.print(summary_table(history, console.width))
    if out is not None:
        console.print(f"history written to {history.save(out)}")
    if not status.endswith("finished"):
        raise typer.Exit(1)


def _print_line(kind: str, text: str) -> None:
    if kind == "round":
        console.print(round_line(_record(json.loads(text))))
    elif kind == "status":
        console.print(f"[bold]{text}[/bold]")
    else:
        console.print(f"[dim]{text}[/dim]")


def _record(data: dict) -> RoundRecord:  # type: ignore[type-arg]
    failed = [Failure(**f) for f in data.pop("failed", [])]
    return RoundRecord(**data, failed=failed)


def _default_name(config: dict[str, str]) -> str:
    return f"partition-{config['partition-id']}" if "partition-id" in config else ""


def _on_signal(callback: Callable[[], None]) -> None:
    """Call ``callback`` on SIGINT or SIGTERM: a clean stop, not a traceback."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: callback())
