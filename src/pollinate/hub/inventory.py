"""The fleet at a glance: each node the caller may see, with its labels, resources, state and
the runs it is working for.

What the hub recorded of a node (its name, projects, revocation, cordon, certificate expiry:
``Hub.list_nodes``, which applies the caller's projects) joined with what the fleet knows of it
(when it was last heard, its labels and resources). ``pollinate nodes`` shows it;
docs/placement.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from pollinate.hub.access import LOCAL_ADMIN, Caller
from pollinate.placement import Selector

if TYPE_CHECKING:  # a node reads NodeEntry (transport.client) without loading the hub
    from pollinate.hub.hub import Hub
    from pollinate.hub.state import NodeRow


STALE_INTERVALS = 2.0
"""Heartbeat intervals of silence after which an alive node shows as stale."""


class NodeState(StrEnum):
    """Whether a node can take work now; the first that holds, in this order."""

    REVOKED = "revoked"  # cut off for good
    CORDONED = "cordoned"  # out of new placements, by an admin (alive or not)
    OFFLINE = "offline"  # silent past the heartbeat timeout, or not heard since the hub started
    STALE = "stale"  # silent for over STALE_INTERVALS heartbeat intervals, not yet timed out
    ONLINE = "online"  # heard from lately


@dataclass(frozen=True)
class NodeEntry:
    """One line of the fleet's inventory."""

    node_id: int
    name: str
    projects: tuple[str, ...]
    state: NodeState
    heartbeat_age: float | None  # seconds; None: not heard since the hub started
    labels: dict[str, str] = field(default_factory=dict)
    resources: dict[str, str] = field(default_factory=dict)
    runs: tuple[str, ...] = ()  # the runs with a task for it now
    cert_expires: float | None = None  # epoch seconds; None: unknown (insecure mode)


def inventory(
    hub: Hub, selector: Selector | None = None, *, caller: Caller = LOCAL_ADMIN
) -> list[NodeEntry]:
    """The nodes ``caller`` may see, by id; with ``selector``, only those that match it now
    (as a run's placement would: a node not heard from since the hub started matches no
    selector)."""
    selector = selector or Selector()
    alive, ages = set(hub.fleet.alive()), hub.fleet.heartbeat_ages()
    interval = hub.fleet.interval(hub.heartbeat_interval)  # what the nodes were told
    entries = []
    for row in sorted(hub.list_nodes(caller=caller), key=lambda row: row.node_id):
        labels, resources = hub.fleet.labels_and_resources(row.node_id)
        if selector and not selector.matches(labels, resources):
            continue
        age = ages.get(row.node_id)
        entries.append(
            NodeEntry(
                row.node_id,
                row.name or "",
                tuple(sorted(row.projects)),
                _state(row, row.node_id in alive, age, interval),
                age,
                labels,
                resources,
                tuple(hub.fleet.runs_of(row.node_id)),
                row.cert_expires,
            )
        )
    return entries


def _state(row: NodeRow, alive: bool, age: float | None, interval: float) -> NodeState:
    if row.revoked_at is not None:
        return NodeState.REVOKED
    if row.cordoned:
        return NodeState.CORDONED
    if not alive:
        return NodeState.OFFLINE
    if age is not None and age > STALE_INTERVALS * interval:
        return NodeState.STALE
    return NodeState.ONLINE
