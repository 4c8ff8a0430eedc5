"""The hub's web dashboard: the fleet, the runs, a run's live rounds and log, a node.

``pollinate hub`` serves it on ``--dashboard-address`` (loopback by default) and prints a
one-time login link. Pages are plain HTML, CSS and JavaScript (``static/``; charts by the
vendored uPlot), filled and kept current by server-sent events that carry the hub's run
events (``Hub.events``). The server is Starlette on uvicorn, on an event loop in a thread of
its own inside the hub process.

- ``server.py``: ``serve_dashboard`` and ``DashboardServer`` (the thread, the loop, stop);
- ``app.py``: routes, pages, event streams and the stop action;
- ``feed.py``: run events handed from runs' threads to the web loop, fanned out to streams;
- ``views.py``: what each page shows, read from the hub;
- ``sessions.py``: login tokens, sessions (each acts as a ``hub.access.Caller``), CSRF tokens.
"""

from pollinate.dashboard.server import DashboardServer, serve_dashboard
from pollinate.dashboard.sessions import Session, Sessions

__all__ = ["DashboardServer", "Session", "Sessions", "serve_dashboard"]
