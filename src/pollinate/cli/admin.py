"""Who may use a hub: ``login``, ``whoami``, ``dashboard``, ``user add/ls/token/revoke`` and
``audit`` (docs/operations.md)."""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from pollinate.cli.console import console, err_console, fail
from pollinate.cli.hubs import (
    CredentialsOption,
    HubOption,
    control_client,
    hub_address,
    refused_hint,
    save_login,
    wait_for_hub,
)
from pollinate.errors import PollinateError
from pollinate.hub.access import Role
from pollinate.text import MAX_LINE, MAX_NAME, inert
from pollinate.transport.client import login

user_app = typer.Typer(help="The hub's users: add, list, new token, revoke.", no_args_is_help=True)

Projects = Annotated[
    list[str] | None,
    typer.Option(
        "--project",
        metavar="PROJECT",
        help="A project the user works in; repeatable (admins work in all).",
    ),
]
Ttl = Annotated[float, typer.Option(help="Seconds the login token may wait to be used.", min=1)]


def login_command(
    hub: Annotated[str, typer.Option("--hub", metavar="HOST:PORT", help="The hub's address.")],
    token: Annotated[str, typer.Option(help="The one-time login token an admin gave you.")],
) -> None:
    """Log in to a hub with the token an admin gave you: your key and certificate are saved
    in your config directory, and later commands use them (and this hub by default)."""
    wait_for_hub(hub)
    try:
        name, credentials = login(hub, token)
    except PollinateError as exc:
        raise fail(exc) from None
    directory = save_login(hub, credentials)
    console.print(Text(f"logged in to {hub} as {name}; credentials in {directory}"))


def whoami_command(hub: HubOption = None, credentials: CredentialsOption = None) -> None:
    """Who the hub takes you for: name, role and projects."""
    try:
        me = control_client(hub, credentials).who_am_i()
    except PollinateError as exc:
        raise fail(refused_hint(exc, hub, credentials)) from None
    where = "all projects" if me.role is Role.ADMIN else ", ".join(sorted(me.projects)) or "-"
    console.print(Text(f"{me.name} at {hub_address(hub)}: {me.role} in {where}"))


def dashboard_command(hub: HubOption = None, credentials: CredentialsOption = None) -> None:
    """Print a one-time link that opens the hub's web dashboard as you (viewers read only).
    The dashboard listens where the hub's --dashboard-address says (loopback by default:
    reach it through an SSH tunnel)."""
    try:
        link = control_client(hub, credentials).dashboard_link()
    except PollinateError as exc:
        raise fail(refused_hint(exc, hub, credentials)) from None
    print(link)


@user_app.command("add")
def user_add(
    name: Annotated[str, typer.Argument(help="1 to 64 letters, digits, '.', '-', '_'.")],
    role: Annotated[Role, typer.Option(help="admin, member (runs) or viewer (read only).")],
    project: Projects = None,
    ttl: Ttl = 24 * 3600.0,
    hub: HubOption = None,
    credentials: CredentialsOption = None,
) -> None:
    """Add a user and print their one-time login token (admins). Hand it to them; they run
    `pollinate login --hub HOST:PORT --token TOKEN`."""
    try:
        token, expires = control_client(hub, credentials).add_user(name, role, project or [], ttl)
    except PollinateError as exc:
        raise fail(refused_hint(exc, hub, credentials)) from None
    _print_token(f"login token for {name}", token, expires)


@user_app.command("token")
def user_token(
    name: Annotated[str, typer.Argument(help="The user.")],
    ttl: Ttl = 24 * 3600.0,
    hub: HubOption = None,
    credentials: CredentialsOption = None,
) -> None:
    """Print another one-time login token for a user who lost theirs (admins)."""
    try:
        token, expires = control_client(hub, credentials).user_token(name, ttl)
    except PollinateError as exc:
        raise fail(refused_hint(exc, hub, credentials)) from None
    _print_token(f"login token for {name}", token, expires)


@user_app.command("ls")
def user_ls(hub: HubOption = None, credentials: CredentialsOption = None) -> None:
    """List the users, revoked ones too (admins)."""
    try:
        users = control_client(hub, credentials).list_users()
    except PollinateError as exc:
        raise fail(refused_hint(exc, hub, credentials)) from None
    table = Table("user", "role", "projects", "added", "by", "revoked")
    for user in users:
        revoked = "-" if user.revoked_at is None else f"{_when(user.revoked_at)} by "
        table.add_row(
            Text(inert(user.name, MAX_NAME)),
            user.role.value,
            Text(inert(", ".join(sorted(user.projects)) or "-", MAX_LINE)),
            _when(user.created),
            Text(inert(user.created_by, MAX_NAME)),
            Text(revoked + inert(user.revoked_by, MAX_NAME) if user.revoked_at else revoked),
        )
    console.print(table)


@user_app.command("revoke")
def user_revoke(
    name: Annotated[str, typer.Argument(help="The user.")],
    hub: HubOption = None,
    credentials: CredentialsOption = None,
) -> None:
    """Revoke a user (admins): their certificate is refused from their next call on, and the
    name is never given again."""
    try:
        control_client(hub, credentials).revoke_user(name)
    except PollinateError as exc:
        raise fail(refused_hint(exc, hub, credentials)) from None
    console.print(Text(f"user {inert(name, MAX_NAME)} revoked"))


def audit_command(
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="How many rows.")] = 50,
    hub: HubOption = None,
    credentials: CredentialsOption = None,
) -> None:
    """Show the newest control actions at the hub: who did what, where, when, and the
    outcome (admins)."""
    try:
        rows = control_client(hub, credentials).audit(limit)
    except PollinateError as exc:
        raise fail(refused_hint(exc, hub, credentials)) from None
    table = Table("when", "who", "action", "project", "target")
    table.add_column("outcome", overflow="fold")
    for row in reversed(rows):  # oldest first, as a log reads
        table.add_row(
            _when(row.time),
            *(Text(inert(v, MAX_NAME)) for v in (row.who, row.action, row.project, row.target)),
            Text(inert(row.outcome, MAX_LINE), "green" if row.outcome == "ok" else "red"),
        )
    console.print(table)


def _print_token(what: str, token: str, expires: float) -> None:
    err_console.print(f"{what}, valid until {_when(expires)}:")
    print(token)


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))
