"""The ``pollinate`` command line."""

from pollinate.cli.main import app, main

__all__ = ["app", "main"]
