"""The hub: the deployment engine's coordinator, in plain Python (no gRPC here).

Nodes dial out to it; users submit runs to it; it keeps everything it must not lose in one
data dir and resumes its runs after a crash. One module per part:

- ``hub``: :class:`Hub`, the one object the transport serves (fleet, control, enrolment);
- ``state``: the durable state, SQLite (WAL) for rows and files for big bytes;
- ``fleet``: which nodes are alive, and the tasks waiting for each of them;
- ``grid``: :class:`HubGrid`, the run loop's Grid over the fleet;
- ``placement``: labels set from the hub, cordons and what nodes reported, kept across
  restarts; ``inventory``: the fleet at a glance, each node's state;
- ``runs``: runs started, checkpointed, resumed and stopped;
- ``journal``: each run's checkpoint and the replies of its current round, on disk;
- ``events``: every run's loop events, published to subscribers (metrics, dashboards);
- ``archives``: app archives packed, checked and unpacked;
- ``credentials``: the hub's TLS material and join tokens;
- ``access``: roles, callers and ``authorize``, the one decision of who may do what;
- ``members``: users and nodes, their projects, revocation, and who presents a certificate;
- ``users``: the users table; ``audit``: every control action, who, when and the outcome;
- ``rate_limit``: a token bucket per source address, which slows down enrolment guesses.
"""

from pollinate.hub.access import Action, Caller, Forbidden, NodeCaller, Role, authorize
from pollinate.hub.archives import pack_app
from pollinate.hub.audit import AuditRow
from pollinate.hub.credentials import HubCredentials
from pollinate.hub.events import RunEvents
from pollinate.hub.fleet import Fleet, PollEnded, Refused, TryLater
from pollinate.hub.grid import HubGrid, RunStopped
from pollinate.hub.hub import Hub, TooManyAttempts
from pollinate.hub.journal import Journal
from pollinate.hub.rate_limit import RateLimiter
from pollinate.hub.runs import Runs
from pollinate.hub.state import HubState, LogRow, NodeRow, RunRow, RunStatus
from pollinate.hub.users import UserRow

__all__ = [
    "Action",
    "AuditRow",
    "Caller",
    "Fleet",
    "Forbidden",
    "Hub",
    "HubCredentials",
    "HubGrid",
    "HubState",
    "Journal",
    "LogRow",
    "NodeCaller",
    "NodeRow",
    "PollEnded",
    "RateLimiter",
    "Refused",
    "Role",
    "RunEvents",
    "RunRow",
    "RunStatus",
    "RunStopped",
    "Runs",
    "TooManyAttempts",
    "TryLater",
    "UserRow",
    "authorize",
    "pack_app",
]
