"""What each page shows, as plain JSON-ready data read from a ``Source``, for one ``Caller``.

A caller sees what the source lets it (a hub: the runs of the projects it may read, and the
nodes that serve them; a refusal is ``Forbidden``, which the hub audits).

Text that came from outside (node names, labels, resources, node config, log lines, failure
reasons, metric names) is passed on as data, never as markup: the pages set it with
``textContent``. These functions may wait (a hub's state database): the web loop calls them
in a worker thread.

A node's runs and last task show only the runs ``caller`` may read (``Source.runs``, which
filters without a refusal to audit): a viewer sees a node that also serves another project,
not that project's runs.
"""

from __future__ import annotations

import json
import time
from typing import Any

from pollinate.dashboard.feed import Activity
from pollinate.dashboard.source import NodeState, Source
from pollinate.hub.access import Caller
from pollinate.hub.state import LogRow, RunRow
from pollinate.text import MAX_NAME, MAX_TEXT, inert

MAX_LOG_LINES = 2000
"""Log lines a run page starts with (the newest); more stream in as they come."""
FLEET_RESOURCES = ("cpus", "memory_gib", "gpus", "gpu_model", "cpu_load", "memory_available_gib")
"""The resources the fleet page shows of each node (its node page shows them all)."""


def fleet_view(
    source: Source, activity: dict[int, Activity], caller: Caller
) -> list[dict[str, Any]]:
    """Every node ``caller`` may see: name, state, heartbeat age, projects, runs, certificate
    expiry, labels, the main resources, and its last task."""
    readable = {row.run_id for row in source.runs(caller)}
    views = []
    for node in source.nodes(caller):
        shown = {k: v for k, v in node.entry.resources.items() if k in FLEET_RESOURCES}
        views.append({**_node(node, activity, readable), "resources": _pairs(shown)})
    return views


def node_view(
    source: Source, node_id: int, activity: dict[int, Activity], caller: Caller
) -> dict[str, Any] | None:
    """The node page's data (the fleet page's, with every resource and the node config), or
    None if the source does not know the node or ``caller`` may not see it."""
    for node in source.nodes(caller):
        if node.node_id == node_id:
            readable = {row.run_id for row in source.runs(caller)}
            shown = {"resources": _pairs(node.entry.resources), "config": node.config}
            return {**_node(node, activity, readable), **shown}
    return None


def runs_view(source: Source, caller: Caller) -> list[dict[str, Any]]:
    """The runs ``caller`` may read, newest first."""
    rows = sorted(source.runs(caller), key=lambda r: -r.created)
    return [run_row(row, source.may_stop(row, caller)) for row in rows]


def run_row(row: RunRow, may_stop: bool) -> dict[str, Any]:
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
        "may_stop": may_stop,
    }


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


def run_view(source: Source, run_id: str, caller: Caller) -> dict[str, Any] | None:
    """The run page's data: the run, its rounds so far, the newest lines of its log, and the
    log's last sequence number (to follow it from). None if there is no such run; Forbidden
    if ``caller`` may not read it."""
    row = source.run(run_id, caller)
    if row is None:
        return None
    rows = source.log_after(run_id, 0)
    rounds, lines = log_entries(rows)
    return {
        "run": run_row(row, source.may_stop(row, caller)),
        "rounds": rounds,
        "log": lines[-MAX_LOG_LINES:],
        "seq": rows[-1].seq if rows else 0,
    }


def _node(node: NodeState, activity: dict[int, Activity], readable: set[str]) -> dict[str, Any]:
    entry, last = node.entry, activity.get(node.node_id)
    expires = entry.cert_expires
    return {
        "id": entry.node_id,
        "name": inert(entry.name, MAX_NAME),
        "state": entry.state.value,
        "age": entry.heartbeat_age,
        "projects": list(entry.projects),
        "runs": [run for run in entry.runs if run in readable],
        "labels": _pairs(entry.labels),
        # seconds left by the hub's clock, so a browser's wrong clock cannot move it
        "cert_left": None if expires is None else expires - time.time(),
        "cert_expires": expires,
        "last": None if last is None or last.run_id not in readable else _activity(last),
    }


def _pairs(values: dict[str, str]) -> dict[str, str]:
    """Labels or resources by key, each key and value capped to one line of text."""
    return {inert(k, MAX_NAME): inert(v, MAX_TEXT) for k, v in sorted(values.items())}


def _activity(last: Activity) -> dict[str, Any]:
    return {
        "run": last.run_id,
        "round": last.round,
        "stage": last.stage,
        "ok": last.ok,
        "when": last.when,
    }
