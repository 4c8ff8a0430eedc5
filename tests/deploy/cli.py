"""What the manifests may pass to ``pollinate``: the options and environment variables its
commands have now (what ``pollinate hub --help`` and ``pollinate node --help`` print), read
from the CLI itself so that a renamed or removed option fails the manifests' tests."""

from __future__ import annotations

from typing import Any

import typer

from pollinate.cli.main import app


def _command(name: str) -> Any:
    """``pollinate NAME`` as Typer builds it (on its own copy of click)."""
    return typer.main.get_command(app).commands[name]  # type: ignore[attr-defined]


def unknown_options(args: list[str]) -> set[str]:
    """The options in a container's ``args`` (``[COMMAND, --opt=value, ...]``) that
    ``pollinate COMMAND`` does not have."""
    options = {o for p in _command(args[0]).params for o in (*p.opts, *p.secondary_opts)}
    return {a.split("=")[0] for a in args[1:] if a.split("=")[0] not in options}


def unknown_environment(args: list[str], env: list[dict[str, Any]]) -> set[str]:
    """The environment variables a container sets that ``pollinate COMMAND`` never reads."""
    read = set()
    for param in _command(args[0]).params:
        names = param.envvar if isinstance(param.envvar, list | tuple) else [param.envvar]
        read |= {n for n in names if n}
    return {e["name"] for e in env} - read
