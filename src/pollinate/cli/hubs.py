"""How commands reach a hub: its address, the user's credentials for it, and a client.

A hub has one address (``HOST:PORT``). ``--hub`` names it; without it, ``$POLLINATE_HUB``, then
the hub of the last ``pollinate login``, then ``DEFAULT_HUB``. A user's credentials (key,
certificate, the hub's CA) live in their config directory, one directory per hub
(``$XDG_CONFIG_HOME/pollinate/hubs/HOST_PORT/``, owner-only), where ``pollinate login`` puts
them; ``--credentials DIR`` (or ``$POLLINATE_CREDENTIALS``) names another, such as the admin
credential a hub writes into ``DATA_DIR/admin``. No credentials: plain text, for a hub that
runs with ``--insecure``.
"""

from __future__ import annotations

import os
import re
import socket
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from pollinate.cli.console import err_console, fail
from pollinate.errors import PollinateError
from pollinate.placement import SelectorError, parse_selector
from pollinate.security import UserCredentials, should_renew
from pollinate.text import MAX_LINE, inert
from pollinate.transport.client import ControlClient, HubUnavailable

DEFAULT_HUB = "127.0.0.1:9092"
HUB_WAIT = 10.0
"""Seconds a command waits for a hub that does not listen yet (one started a moment ago)."""

HubOption = Annotated[
    str | None,
    typer.Option(
        "--hub",
        metavar="HOST:PORT",
        envvar="POLLINATE_HUB",
        show_default=False,
        help=f"The hub's address [default: the last login's hub, else {DEFAULT_HUB}].",
    ),
]
CredentialsOption = Annotated[
    Path | None,
    typer.Option(
        "--credentials",
        metavar="DIR",
        envvar="POLLINATE_CREDENTIALS",
        show_default=False,
        help="Your key and certificate for the hub [default: those `pollinate login` saved "
        "for it]; on the hub's machine, its admin credential: DATA_DIR/admin.",
    ),
]


def config_dir() -> Path:
    """Where pollinate keeps a user's settings and credentials."""
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "pollinate"


def hub_address(given: str | None) -> str:
    """The hub a command talks to: ``given``, else the last login's hub, else the default."""
    if given:
        return given
    saved = config_dir() / "hub"
    if saved.is_file():
        address = saved.read_text().strip()
        if re.fullmatch(r"[\w.\[\]:-]{1,260}", address):
            return address
    return DEFAULT_HUB


def login_dir(hub: str) -> Path:
    """Where ``pollinate login`` keeps the credentials for ``hub``."""
    return config_dir() / "hubs" / re.sub(r"[^A-Za-z0-9.-]", "_", hub)


def save_login(hub: str, credentials: UserCredentials) -> Path:
    """Keep a login's credentials for ``hub``, and make it the default hub."""
    directory = login_dir(hub)
    credentials.save(directory)
    (config_dir() / "hub").write_text(hub + "\n")
    return directory


def control_client(hub: str | None, credentials: Path | None) -> ControlClient:
    """A client of the hub's control API, once the hub listens, with the user's credentials
    (renewed first when two thirds of their life is gone); exits with the fix if named
    credentials are missing."""
    address = hub_address(hub)
    wait_for_hub(address)
    directory = credentials or login_dir(address)
    saved = UserCredentials.load(directory)
    if saved is None and credentials is not None:
        raise fail(
            PollinateError(
                f"no credentials in {credentials} (user.key, user.pem, ca.pem).\nHint: the hub "
                "writes its admin credential to DATA_DIR/admin at its first start; a user logs "
                "in with `pollinate login --hub HOST:PORT --token TOKEN`"
            )
        )
    client = ControlClient(address, saved)
    if saved is not None and should_renew(saved.cert_pem):
        try:
            saved = client.renew_user(saved)
        except PollinateError as exc:
            err_console.print(Text(inert(f"could not renew your certificate: {exc}", MAX_LINE)))
        else:
            saved.save(directory)
            client.close()
            client = ControlClient(address, saved)
    return client


def refused_hint(exc: PollinateError, hub: str | None, credentials: Path | None) -> PollinateError:
    """``exc``, with how to log in when a hub was unreachable without credentials (a TLS hub
    drops a plain-text connection, which looks like a hub that is away)."""
    address = hub_address(hub)
    if not isinstance(exc, HubUnavailable) or credentials or login_dir(address).is_dir():
        return exc
    return PollinateError(
        f"{exc}.\nHint: if the hub at {address} uses TLS (the default), log in first: "
        f"`pollinate login --hub {address} --token TOKEN` (an admin runs `pollinate user add`), "
        "or, on the hub's machine, add --credentials DATA_DIR/admin"
    )


def checked_selector(text: str) -> str:
    """``text`` as a selector, checked here so a typo fails before anything is sent."""
    try:
        return str(parse_selector(text))
    except SelectorError as exc:
        raise fail(PollinateError(f"--select: {exc}")) from None


def wait_for_hub(address: str, timeout: float = HUB_WAIT) -> None:
    """Return once ``address`` accepts connections, or after ``timeout`` seconds (the call
    that follows then says what is wrong), saying once that it waits: a command pasted
    right after ``pollinate hub &`` works."""
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout
    said = False
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
                return
        except ValueError:
            return  # not HOST:PORT: the call that follows says so
        except OSError:
            if time.monotonic() >= deadline:
                return
        if not said:
            waiting = f"waiting up to {timeout:g}s for the hub at {address} to listen..."
            err_console.print(Text(inert(waiting, MAX_LINE), "yellow"))
            said = True
        time.sleep(0.2)
