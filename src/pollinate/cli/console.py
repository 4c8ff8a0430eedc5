"""What every command shares: the consoles, user errors, logging and ``KEY=VALUE`` options.

Commands import from here and never from each other: ``main.py`` registers them all on the
one Typer app, so no command module needs another to exist first.
"""

from __future__ import annotations

import logging

import typer
from rich.console import Console
from rich.highlighter import NullHighlighter
from rich.logging import RichHandler
from rich.text import Text

from pollinate.text import MAX_LINE, inert

# Text from nodes and users reaches these consoles: never highlighted (rich's highlighter is
# super-linear: a node's 80 KB error froze a hub for 71 s), and printed as Text, not markup.
# Lines are soft-wrapped: a terminal wraps a long line itself, and piped output (CI, tee)
# gets the whole line, never one broken mid-number at 80 columns.
console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

USAGE_ERROR = 2
"""Exit status of a usage or app error: a bad option, an app that cannot load."""
RUN_FAILED = 1
"""Exit status of a run that failed: no round applied, stopped by failures, or a
``RunError``; its history is kept."""


def setup_logging(verbose: bool) -> None:
    """Log to stderr through rich, as plain text: no highlighter, no markup, one line per
    message (log messages quote nodes and users: ``InertFormatter``)."""
    handler = RichHandler(
        console=err_console,
        show_path=False,
        highlighter=NullHighlighter(),
        markup=False,
        keywords=[],
    )
    handler.setFormatter(InertFormatter("%(message)s"))
    logging.basicConfig(level=logging.INFO if verbose else logging.ERROR, handlers=[handler])


class InertFormatter(logging.Formatter):
    """Formats a record's message inert (``pollinate.text``): one line of at most
    ``MAX_LINE`` characters, whatever a node or user put in it. A traceback, which is the
    hub's own, follows on its lines as usual."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return inert(super().formatMessage(record), MAX_LINE)


def fail(exc: Exception | str) -> typer.Exit:
    """Print a user error (no traceback) and return the exit to raise (``USAGE_ERROR``)."""
    # the error may quote a hub, a node or a file: shown as text, bounded, never as markup
    err_console.print(Text.assemble(("error:", "bold red"), " ", _bounded(str(exc))))
    return typer.Exit(USAGE_ERROR)


def run_failed(exc: Exception | str) -> typer.Exit:
    """Print why a run failed and return the exit to raise (``RUN_FAILED``)."""
    err_console.print(Text.assemble(("run failed:", "bold red"), " ", _bounded(str(exc))))
    return typer.Exit(RUN_FAILED)


def _bounded(message: str) -> str:
    """An error message cut at ``MAX_LINE`` characters; its own lines (a Hint) kept."""
    return "\n".join(inert(line, MAX_LINE) for line in message.splitlines()[:20])


def parse_overrides(items: list[str]) -> dict[str, str]:
    """``--config KEY=VALUE`` options as a dict; BadParameter for an item without ``=``."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"{item!r} is not KEY=VALUE, e.g. --config lr=0.05")
        overrides[key.strip()] = value.strip()
    return overrides
