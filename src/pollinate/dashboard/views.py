"""What each page shows, as plain JSON-ready data read from the hub, for one ``Caller``.

A caller sees the runs of the projects it may read (``access``: an admin all of them) and the
nodes that serve them, through the hub's own checks (``Hub.list_runs``, ``Hub.run_info``,
which refuses with ``Forbidden`` and audits the refusal).

Text that came from outside (node config, log lines, failure reasons, metric names) is
passed on as data, never as markup: the pages set it with ``textContent``. These functions
read the hub's state database and may wait for its lock: the web loop calls them in a
worker thread.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from pollinate.dashboard.feed import Activity
from pollinate.hub.access import Action, Caller, Forbidden, Role, authorize
from pollinate.hub.state import LogRow, RunRow

if TYPE_CHECKING:
    from pollinate.hub.hub import Hub

MAX_LOG_LINES = 2000
"""Log lines a run page starts with (the newest); more stream in as they come."""


def fleet_view(hub: Hub, activity: dict[int, Activity], caller: Caller) -> list[dict[str, Any]]:
    """Every node the hub knows that serves a project ``caller`` may read: state, heartbeat
    age, config, and its last task."""
    ages = hub.fleet.heartbeat_ages()
    alive = set(hub.fleet.alive())
    return [
        _node(hub, node_id, ages.get(node_id), node_id in alive, activity, caller)
        for node_id in sorted(ages)
        if _sees_node(hub, node_id, caller)
    ]


def _node(
    hub: Hub,
    node_id: int,
    age: float | None,
    alive: bool,
    activity: dict[int, Activity],
    caller: Caller,
) -> dict[str, Any]:
    last = activity.get(node_id)
    if last is not None and not may_read_run(hub, last.run_id, caller):
        last = None
    return {
        "id": node_id,
        "state": "alive" if alive else "silent",
        "age": age,
        "config": hub.fleet.node_config(node_id),
        "last": None if last is None else _activity(last),
    }


def node_view(
    hub: Hub, node_id: int, activity: dict[int, Activity], caller: Caller
) -> dict[str, Any] | None:
    """The node page's data, or None if the hub does not know the node or ``caller`` may
    not see it."""
    ages = hub.fleet.heartbeat_ages()
    if node_id not in ages or not _sees_node(hub, node_id, caller):
        return None
    alive = node_id in set(hub.fleet.alive())
    return _node(hub, node_id, ages[node_id], alive, activity, caller)


def runs_view(hub: Hub, caller: Caller) -> list[dict[str, Any]]:
    """The runs ``caller`` may read, newest first."""
    rows = sorted(hub.list_runs(caller=caller), key=lambda r: -r.created)
    return [run_row(row, caller) for row in rows]


def run_row(row: RunRow, caller: Caller) -> dict[str, Any]:
    return {
        "id": row.run_id,
        "app": row.app,
        "app_hash": row.app_hash,
        "project": row.project,
        "status": row.status.value,
        "round": row.round,
        "rounds": row.rounds,
        "created": row.created,
        "detail": row.detail,
        "may_stop": _allowed(caller, Action.STOP, row.project),
    }


def may_read_run(hub: Hub, run_id: str, caller: Caller) -> bool:
    row = hub.state.run(run_id)
    return row is not None and caller.may_read(row.project)


def log_entries(rows: list[LogRow]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A run's log split into its rounds (the ``round`` entries: RoundRecords as dicts) and
    its other lines."""
    rounds, lines = [], []
    for row in rows:
        if row.kind == "round":
            rounds.append(json.loads(row.text))
        else:
            lines.append({"seq": row.seq, "time": row.time, "kind": row.kind, "text": row.text})
    return rounds, lines


def run_view(hub: Hub, run_id: str, caller: Caller) -> dict[str, Any] | None:
    """The run page's data: the run, its rounds so far, the newest lines of its log, and the
    log's last sequence number (to follow it from). None if there is no such run; Forbidden
    if ``caller`` may not read it."""
    row = hub.run_info(run_id, caller=caller)
    if row is None:
        return None
    rows = hub.state.log_after(run_id, 0)
    rounds, lines = log_entries(rows)
    return {
        "run": run_row(row, caller),
        "rounds": rounds,
        "log": lines[-MAX_LOG_LINES:],
        "seq": rows[-1].seq if rows else 0,
    }


def _sees_node(hub: Hub, node_id: int, caller: Caller) -> bool:
    if caller.role is Role.ADMIN:
        return True
    return any(caller.may_read(project) for project in hub.node_projects(node_id))


def _allowed(caller: Caller, action: Action, project: str) -> bool:
    try:
        authorize(caller, action, project)
    except Forbidden:
        return False
    return True


def _activity(last: Activity) -> dict[str, Any]:
    return {
        "run": last.run_id,
        "round": last.round,
        "stage": last.stage,
        "ok": last.ok,
        "when": last.when,
    }
