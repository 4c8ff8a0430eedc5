"""``pollinate``: run federated learning apps from the command line."""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable
from enum import StrEnum
from importlib.metadata import version
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.text import Text

from pollinate.app import App, app_hash, load_app
from pollinate.cli.admin import (
    audit_command,
    dashboard_command,
    login_command,
    user_app,
    whoami_command,
)
from pollinate.cli.console import (
    console,
    err_console,
    fail,
    parse_overrides,
    run_failed,
    setup_logging,
)
from pollinate.cli.deploy import (
    hub_command,
    log_command,
    ls_command,
    node_command,
    pull_command,
    run_on_hub,
    stop_command,
    token_app,
)
from pollinate.cli.fleet import (
    node_cordon,
    node_label,
    node_revoke,
    node_uncordon,
    nodes_command,
)
from pollinate.cli.hubs import CredentialsOption
from pollinate.cli.new import new
from pollinate.cli.outputs import RunOutputs, plot_command
from pollinate.cli.render import RunProgress, nothing_applied, summary
from pollinate.dashboard import LocalRun, serve_source
from pollinate.errors import AppError, PollinateError
from pollinate.loop.app import ServerApp
from pollinate.loop.events import Event
from pollinate.loop.history import History
from pollinate.simulation.adversary import ATTACKS, Adversaries
from pollinate.simulation.ray_engine import RayEngine
from pollinate.simulation.run import run_simulation
from pollinate.simulation.speed import Stragglers
from pollinate.text import MAX_LINE, inert
from pollinate.tracking import Tracker, tracker_for

app = typer.Typer(
    help="pollinate: federated learning. The same app runs in simulation and across sites.",
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(shown: bool) -> None:
    if shown:
        print(f"pollinate {version('pollinate')}")
        raise typer.Exit()


@app.callback(invoke_without_command=True)
def _root(
    context: typer.Context,
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    """pollinate: federated learning. The same app runs in simulation and across sites."""
    if context.invoked_subcommand is None:  # bare `pollinate`: the help, and success
        print(context.get_help())
        raise typer.Exit()


class Engine(StrEnum):
    """``pollinate run --engine``: where a simulation's virtual clients run."""

    IN_PROCESS = "in-process"
    RAY = "ray"


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
        typer.Option(
            help="Write history.jsonl into this directory (created), a line appended as each "
            "round ends (an interrupted run keeps the rounds it did), and the final model as "
            "model.npz. Checked before the run starts."
        ),
    ] = None,
    track: Annotated[
        list[str] | None,
        typer.Option(
            metavar="KIND:DIR",
            help="Also log the run's parameters, per-round metrics and final model to "
            "mlflow:DIR (an MLflow store, or a tracking URI) or tensorboard:DIR; repeatable. "
            "Needs pip install 'pollinate[mlflow]' or 'pollinate[tensorboard]'.",
        ),
    ] = None,
    max_failed_rounds: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Stop the run, as failed, after this many rounds in a row without one usable "
            "update (default: the app's ServerApp.max_failed_rounds, 3; 0: never).",
        ),
    ] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Log every failed reply and round.")
    ] = False,
    hub: Annotated[
        str | None,
        typer.Option(
            metavar="HOST:PORT",
            help="Run on a hub's nodes instead of in simulation: the hub's address.",
        ),
    ] = None,
    project: Annotated[
        str,
        typer.Option(
            metavar="PROJECT",
            help="With --hub: the project the run belongs to; only its nodes take part "
            "[default: default].",
        ),
    ] = "",
    credentials: CredentialsOption = None,
    min_nodes: Annotated[
        int,
        typer.Option(
            min=0,
            help="With --hub: wait for at least this many matching nodes before each round "
            "(0: the strategy's own minimum).",
        ),
    ] = 0,
    max_nodes: Annotated[
        int, typer.Option(min=0, help="With --hub: use at most this many nodes (0: no bound).")
    ] = 0,
    select: Annotated[
        str | None,
        typer.Option(
            metavar="SELECTOR",
            help="With --hub: run only on the nodes that match, re-checked every round, e.g. "
            "'gpus>=1,region in (eu,ch),!draining' (default: [tool.pollinate] select; "
            "docs/placement.md).",
        ),
    ] = None,
    adversaries: Annotated[
        float | None,
        typer.Option(
            "--adversaries",
            metavar="FRACTION",
            help="Fraction of the virtual clients (0 to 1) that attack with --attack, in every "
            "round they are sampled; chosen once from --seed.",
        ),
    ] = None,
    attack: Annotated[
        str | None,
        typer.Option(
            metavar="NAME",
            help="What the adversaries do: sign-flip (send the reversed update), scale (send "
            "the update boosted by --attack-scale), gaussian-noise (send the global model plus "
            "Gaussian noise), label-flip (train on flipped labels; the app must honour "
            "context.node_config['attack'], as examples/quickstart-numpy does).",
        ),
    ] = None,
    attack_scale: Annotated[
        float | None,
        typer.Option(
            metavar="X",
            help="sign-flip sends global - X * update (default 1); scale sends "
            "global + X * update (default 10). Updates are taken relative to the global model.",
        ),
    ] = None,
    attack_noise_std: Annotated[
        float | None,
        typer.Option(
            metavar="S",
            help="gaussian-noise: standard deviation of the noise added to each weight "
            "(default 1.0).",
        ),
    ] = None,
    stragglers: Annotated[
        float | None,
        typer.Option(
            metavar="FRACTION",
            help="Fraction of the virtual clients (0 to 1) that work --slowdown times slower, "
            "chosen once from --seed: see how a strategy copes (FedBuff does not wait).",
        ),
    ] = None,
    slowdown: Annotated[
        float, typer.Option(metavar="X", help="How many times slower --stragglers work.")
    ] = 10.0,
    dashboard: Annotated[
        bool,
        typer.Option(
            help="Show the simulation live in a web dashboard on 127.0.0.1 (a free port), "
            "while it runs: prints a one-time login link."
        ),
    ] = False,
    engine: Annotated[
        Engine,
        typer.Option(
            help="Where the virtual clients run: in this process (threads), or on Ray "
            "workers (pip install 'pollinate[ray]'); the same seed gives the same history.",
        ),
    ] = Engine.IN_PROCESS,
    address: Annotated[
        str | None,
        typer.Option(
            metavar="HOST:PORT",
            help="With --engine ray: the Ray cluster's address, as `ray start --head` prints "
            "it (default: start Ray on this machine, on 127.0.0.1 only).",
        ),
    ] = None,
) -> None:
    """Run an app: in simulation (virtual clients), or on a hub's nodes with --hub.

    Exit status: 0 when the run ended with at least one round applied; 1 when it failed (no
    round applied, stopped after --max-failed-rounds rounds without a usable update, or it
    could not go on); 2 for a bad option or an app that cannot load; 130 on Ctrl-C. The
    history written with --out is kept in every case.
    """
    setup_logging(verbose)
    _check_out(out)
    trackers = _trackers(track or [])
    attackers = _adversaries(adversaries, attack, attack_scale, attack_noise_std, seed)
    if hub is None and select is not None:
        raise fail(
            "--select places a run on a hub's nodes; virtual clients have labels only from "
            "Python (run_simulation(..., node_config_fn=..., select=...)).\nHint: pollinate "
            "run APP --hub HOST:9092 --select 'gpus>=1'"
        )
    if hub is None and (project or credentials or min_nodes or max_nodes):
        raise fail(
            "--project, --credentials, --min-nodes and --max-nodes go with --hub: a "
            "simulation has none of them (its --clients are all there)"
        )
    if hub is not None and dashboard:
        raise fail("--dashboard shows a simulation; a hub serves its own (`pollinate hub`)")
    if hub is not None and engine is Engine.RAY:
        raise fail("--engine ray runs a simulation; with --hub, the hub's nodes run the clients")
    if address is not None and engine is not Engine.RAY:
        raise fail(
            "--address names a Ray cluster, for --engine ray.\n"
            "Hint: pollinate run APP --engine ray --address HOST:6379"
        )
    if hub is not None:
        _check_hub_options(attackers is not None or stragglers is not None, max_failed_rounds)
        overrides = parse_overrides(config or [])
        run_on_hub(
            app_dir,
            hub,
            overrides,
            rounds,
            seed,
            out,
            select,
            project=project,
            credentials=credentials,
            nodes=(min_nodes, max_nodes),
            trackers=trackers,
        )
        return
    try:
        loaded = load_app(app_dir, parse_overrides(config or []))
        server_app = _server_app(loaded, rounds, max_failed_rounds)
    except PollinateError as exc:
        raise fail(exc) from None
    num_clients = clients or loaded.clients
    console.print(
        Text.assemble(
            (loaded.name, "bold"),
            f": {type(server_app.strategy).__name__}, {server_app.num_rounds} rounds, "
            f"{num_clients} virtual clients, seed {seed}",
        )
    )
    if attackers is not None:
        console.print(_attackers_line(attackers, num_clients))
    history = History(
        app=loaded.name,
        seed=seed,
        config=dict(loaded.config),
        app_hash=app_hash(app_dir),
        overrides=parse_overrides(config or []),
        strategy=type(server_app.strategy).__name__,
        num_rounds=server_app.num_rounds,
        clients=num_clients,
    )
    outputs = RunOutputs(history, out, trackers)
    started = time.monotonic()
    local = LocalRun(loaded.name, server_app.num_rounds) if dashboard else None
    board = serve_source(local, "127.0.0.1:0") if local else None
    if board is not None:
        console.print(f"dashboard: {board.login_link()} (a one-time login link)", soft_wrap=True)
    try:
        failure = _simulate(
            loaded,
            server_app,
            outputs,
            num_clients=num_clients,
            seed=seed,
            concurrency=concurrency or loaded.concurrency,
            attackers=attackers,
            speed=_stragglers(stragglers, slowdown, seed, num_clients),
            watch=local.on_event if local else None,
            engine=RayEngine(address) if engine is Engine.RAY else None,
        )
    finally:
        if board is not None:
            board.stop()
    for line in summary(history, time.monotonic() - started):
        console.print(line)
    if attackers is not None:
        console.print(_attackers_line(attackers, num_clients))
    if out is not None:
        console.print(Text(f"history written to {outputs.writer.path if outputs.writer else out}"))
    if outputs.model is not None:
        console.print(Text(f"model written to {outputs.model}"))
    problem = str(failure) if failure is not None else nothing_applied(history)
    if problem is not None:
        raise run_failed(problem)


def _check_hub_options(simulated_clients: bool, max_failed_rounds: int | None) -> None:
    if simulated_clients:
        raise fail(
            "--adversaries and --stragglers simulate virtual clients; they cannot be "
            "combined with --hub, where each node runs its own code"
        )
    if max_failed_rounds is not None:
        raise fail(
            "--max-failed-rounds applies to simulation; on a hub the app's server_fn "
            "sets it: ServerApp(strategy, max_failed_rounds=...)"
        )


def _simulate(
    loaded: App,
    server_app: ServerApp,
    outputs: RunOutputs,
    *,
    num_clients: int,
    seed: int,
    concurrency: int | None,
    attackers: Adversaries | None,
    speed: Stragglers | None,
    watch: Callable[[Event], None] | None = None,
    engine: RayEngine | None = None,
) -> PollinateError | None:
    """Run the simulation with its progress shown and its ``outputs`` kept as rounds end
    (history, trackers) and when it ends (the model); the error that ended it early, if
    one did."""
    try:
        with RunProgress(console, server_app.num_rounds) as progress:
            result = run_simulation(
                server_app,
                loaded.client_fn,
                num_clients,
                seed=seed,
                concurrency=concurrency,
                run_config=loaded.config,
                # saved, then shown (and watched: --dashboard)
                on_event=_both(outputs, progress, *([watch] if watch else [])),
                adversaries=attackers,
                client_speed=speed,
                engine=engine,
            )
    except KeyboardInterrupt:
        outputs.finish(None, "interrupted")
        _interrupted(outputs.history, outputs.out)
    except AppError as exc:
        outputs.finish(None, "failed")
        raise fail(exc) from None
    except PollinateError as exc:  # RunError, ClientError: the run itself failed
        outputs.finish(None, "failed")
        return exc
    outputs.finish(result.arrays, "finished")
    if result.stopped is not None:
        console.print(Text(f"stopped early: {inert(result.stopped, MAX_LINE)}", "yellow"))
    return None


def _trackers(specs: list[str]) -> list[Tracker]:
    """``--track`` as trackers, made before the run: a missing library fails at once."""
    try:
        return [tracker_for(spec) for spec in specs]
    except ValueError as exc:
        raise fail(exc) from None


def _both(*handlers: Callable[[Event], None]) -> Callable[[Event], None]:
    def handle(event: Event) -> None:
        for handler in handlers:
            handler(event)

    return handle


def _check_out(out: Path | None) -> None:
    """``--out`` must be a directory we can write history.jsonl into: checked before the
    run, so a run's history is never lost at its end."""
    if out is None:
        return
    if out.exists() and not out.is_dir():
        raise fail(
            f"--out {out} is a file; --out names a directory, where history.jsonl is written.\n"
            f"Hint: --out {out.parent / (out.stem or 'out')}"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".pollinate-probe.{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise fail(f"--out {out}: cannot write there: {exc.strerror or exc}") from None


def _interrupted(history: History, out: Path | None) -> NoReturn:
    done = history.rounds[-1].round if history.rounds else None
    kept = f"; history.jsonl in {out} keeps rounds 0 to {done}" if out and done is not None else ""
    err_console.print(Text(f"interrupted after round {done}{kept}", "yellow"))
    raise typer.Exit(130)


# The other commands live beside this module (``deploy.py``, ``new.py``) and are registered
# here, in the order ``--help`` lists them: a command module never imports this one.
node_app = typer.Typer(invoke_without_command=True, help="Start a node, or manage the hub's nodes.")
node_app.callback()(node_command)
node_app.command("label")(node_label)
node_app.command("cordon")(node_cordon)
node_app.command("uncordon")(node_uncordon)
node_app.command("revoke")(node_revoke)

app.command("hub")(hub_command)
app.add_typer(node_app, name="node")
app.add_typer(token_app, name="token")
app.command("login")(login_command)
app.command("whoami")(whoami_command)
app.command("dashboard")(dashboard_command)
app.add_typer(user_app, name="user")
app.command("audit")(audit_command)
app.command("pull")(pull_command)
app.command("ls")(ls_command)
app.command("nodes")(nodes_command)
app.command("log")(log_command)
app.command("stop")(stop_command)
app.command()(new)
app.command("plot")(plot_command)


def _adversaries(
    fraction: float | None,
    attack: str | None,
    scale: float | None,
    noise_std: float | None,
    seed: int,
) -> Adversaries | None:
    """The attack options as Adversaries, or None; a bad combination exits with status 2."""
    if fraction is None:
        if attack is not None or scale is not None or noise_std is not None:
            raise fail(
                "--attack, --attack-scale and --attack-noise-std need --adversaries "
                "FRACTION, e.g. --adversaries 0.2 --attack sign-flip"
            )
        return None
    if attack is None:
        raise fail(f"--adversaries {fraction} needs --attack NAME, one of {', '.join(ATTACKS)}")
    try:
        return Adversaries(fraction, attack, scale=scale, noise_std=noise_std, seed=seed)
    except (TypeError, ValueError) as exc:
        # The first line says what is wrong; the Hint after it shows Python, not options.
        raise fail(str(exc).splitlines()[0]) from None


def _stragglers(
    fraction: float | None, slowdown: float, seed: int, num_clients: int
) -> Stragglers | None:
    if fraction is None:
        return None
    try:
        speed = Stragglers(fraction, slowdown, seed=seed)
    except (TypeError, ValueError) as exc:
        raise fail(f"--stragglers/--slowdown: {exc}") from None
    slow = len(speed.clients(num_clients))
    console.print(f"stragglers: {slow} of {num_clients} virtual clients, {slowdown:g}x slower")
    return speed


def _attackers_line(adversaries: Adversaries, num_clients: int) -> str:
    """E.g. "adversaries: 6 of 20 clients (1, 4, 7, 8, 13, 19) attack with scale (scale 10.0)"."""
    ids = sorted(adversaries.clients(num_clients))
    who = f"{len(ids)} of {num_clients} clients"
    if ids:
        who += " (" + ", ".join(map(str, ids[:20])) + (", ...)" if len(ids) > 20 else ")")
    how = adversaries.attack
    if adversaries.scale is not None:
        how += f" (scale {adversaries.scale})"
    if adversaries.noise_std is not None:
        how += f" (noise std {adversaries.noise_std})"
    return f"adversaries: {who} attack with {how}"


def _server_app(loaded: App, rounds: int | None, max_failed_rounds: int | None) -> ServerApp:
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
    if max_failed_rounds is not None:
        server_app.max_failed_rounds = max_failed_rounds or None
    return server_app


def main() -> None:
    # gRPC's core logs every refused TLS handshake to stderr; pollinate explains them itself
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    app()
