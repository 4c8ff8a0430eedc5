"""The hub's web dashboard: the fleet, the runs, a run's live rounds and log, a node.

``pollinate hub`` serves it on ``--dashboard-address`` (loopback by default) and prints a
one-time login link; ``pollinate run APP --dashboard`` serves one for a local simulation.
Pages are plain HTML, CSS and JavaScript (``static/``; charts by the vendored uPlot), filled
and kept current by server-sent events that carry the runs' loop events. The server is
Starlette on uvicorn, on an event loop in a thread of its own inside the process.

- ``server.py``: ``serve_dashboard`` and ``DashboardServer`` (the thread, the loop, stop);
- ``source.py``: what a dashboard shows, behind one interface: a hub (``HubSource``) or a
  simulation in this process (``LocalRun``, ``pollinate run APP --dashboard``);
- ``app.py``: routes, pages, event streams and the stop action;
- ``feed.py``: run events handed from runs' threads to the web loop, fanned out to streams;
- ``views.py``: what each page shows, read from the source;
- ``sessions.py``: login tokens, sessions (each acts as a ``hub.access.Caller``), CSRF tokens.
"""

from pollinate.dashboard.server import DashboardServer, serve_dashboard, serve_source
from pollinate.dashboard.sessions import Session, Sessions
from pollinate.dashboard.source import HubSource, LocalRun, NodeState, Source

__all__ = [
    "DashboardServer",
    "HubSource",
    "LocalRun",
    "NodeState",
    "Session",
    "Sessions",
    "Source",
    "serve_dashboard",
    "serve_source",
]
