"""``python -m pollinate`` is the ``pollinate`` command."""

from pollinate.cli import main

main()
