"""``pollinate``: run federated learning apps from the command line."""

from __future__ import annotations

import logging
import os
import traceback
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler

from pollinate.app import App, load_app
from pollinate.cli.render import RunProgress, summary_table
from pollinate.errors import AppError, PollinateError
from pollinate.server.app import ServerApp
from pollinate.simulation.run import run_simulation

app = typer.Typer(
    help="pollinate: federated learning. The same app runs in simulation and across sites.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)


@app.callback()
def _root() -> None:
    """pollinate: federated learning. The same app runs in simulation and across sites."""


@app.command()
def run(
    app_dir: Annotated[
        Path,
        typer.Argument(help="App directory (holds pyproject.toml with a [tool.pollinate] table)."),
    ],
    rounds: Annotated[
        int | None,
        typer.Option(
            "--rounds", "-r", min=0, help="Number of rounds (default: the app's num_rounds)."
        ),
    ] = None,
    clients: Annotated[
        int | None,
        typer.Option(
            "--clients",
            "-n",
            min=1,
            help="Number of virtual clients (default: [tool.pollinate.simulation] clients).",
        ),
    ] = None,
    seed: Annotated[
        int, typer.Option(help="Seed for client sampling; the same seed gives the same history.")
    ] = 0,
    config: Annotated[
        list[str] | None,
        typer.Option(
            "--config",
            "-c",
            metavar="KEY=VALUE",
            help="Override a run config value from [tool.pollinate.config]; repeatable.",
        ),
    ] = None,
    concurrency: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Clients trained at once (default: [tool.pollinate.simulation] "
            "concurrency, else the number of CPUs).",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Write history.json (one entry per round) into this directory."),
    ] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Log every failed reply and round.")
    ] = False,
    hub: Annotated[
        str | None,
        typer.Option(
            metavar="HOST:PORT",
            help="Run on a hub's fleet instead of in simulation: the hub's control address.",
        ),
    ] = None,
) -> None:
    """Run an app: in simulation (virtual clients), or on a hub's nodes with --hub."""
    setup_logging(verbose)
    if hub is not None:
        from pollinate.cli.deploy import run_on_hub

        overrides = _parse_overrides(config or [])
        run_on_hub(app_dir, hub, overrides, rounds, seed, out)
        return
    try:
        loaded = load_app(app_dir, _parse_overrides(config or []))
        server_app = _server_app(loaded, rounds)
        num_clients = clients or loaded.clients
        console.print(
            f"[bold]{loaded.name}[/bold]: {type(server_app.strategy).__name__}, "
            f"{server_app.num_rounds} rounds, {num_clients} virtual clients, seed {seed}"
        )
        with RunProgress(console, server_app.num_rounds) as progress:
            result = run_simulation(
                server_app,
                loaded.client_fn,
                num_clients,
                seed=seed,
                concurrency=concurrency or loaded.concurrency,
                run_config=loaded.config,
                on_event=progress,
            )
    except PollinateError as exc:
        raise fail(exc) from None
    console.print(summary_table(result.history, console.width))
    if out is not None:
        console.print(f"history written to {result.history.save(out)}")


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.ERROR,
        handlers=[RichHandler(console=err_console, show_path=False)],
        format="%(message)s",
    )


def fail(exc: Exception) -> typer.Exit:
    """Print a user error (no traceback) and return the exit to raise."""
    err_console.print(f"[bold red]error:[/bold red] {exc}")
    return typer.Exit(2)


def _parse_overrides(items: list[str]) -> dict[str, str]:
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"{item!r} is not KEY=VALUE, e.g. --config lr=0.05")
        overrides[key.strip()] = value.strip()
    return overrides


def _server_app(loaded: App, rounds: int | None) -> ServerApp:
    try:
        server_app = loaded.server_app()
    except PollinateError:
        raise
    except Exception as exc:
        where = traceback.extract_tb(exc.__traceback__)[-1]
        raise AppError(
            f"server_fn of app {loaded.name!r} raised {type(exc).__name__}: {exc} "
            f"(at {where.filename}:{where.lineno})"
        ) from None
    if rounds is not None:
        server_app.num_rounds = rounds
    return server_app


def main() -> None:
    # gRPC's core logs every refused TLS handshake to stderr; pollinate explains them itself
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    import pollinate.cli.deploy  # noqa: F401  (registers hub, node, ls, log, stop, token)

    app()
