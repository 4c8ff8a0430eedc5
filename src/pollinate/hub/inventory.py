"""The fleet at a glance: each node the caller may see, with its labels, resources, state and
the runs it is working for.

What the hub recorded of a node (its name, projects, revocation: ``Hub.list_nodes``, which
applies the caller's projects) joined with what the fleet heard from it in this process (when,
its labels and resources). ``pollinate nodes`` shows it; docs/placement.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from pollinate.hub.access import LOCAL_ADMIN, Caller
from pollinate.placement import Selector

if TYPE_CHECKING:  # a node reads NodeEntry (transport.client) without loading the hub
    from pollinate.hub.hub import Hub


class NodeState(StrEnum):
    """Whether a node can take work now."""

    ONLINE = "online"  # heard from within the heartbeat timeout
    OFFLINE = "offline"  # silent past it, or not heard from since the hub started
    REVOKED = "revoked"  # cut off for good


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


def inventory(
    hub: Hub, selector: Selector | None = None, *, caller: Caller = LOCAL_ADMIN
) -> list[NodeEntry]:
    """The nodes ``caller`` may see, by id; with ``selector``, only those that match it now
    (as a run's placement would: a node not heard from since the hub started matches no
    selector)."""
    selector = selector or Selector()
    alive, ages = set(hub.fleet.alive()), hub.fleet.heartbeat_ages()
    entries = []
    for row in sorted(hub.list_nodes(caller=caller), key=lambda row: row.node_id):
        labels, resources = hub.fleet.labels_and_resources(row.node_id)
        if selector and not selector.matches(labels, resources):
            continue
        if row.revoked_at is not None:
            state = NodeState.REVOKED
        else:
            state = NodeState.ONLINE if row.node_id in alive else NodeState.OFFLINE
        entries.append(
            NodeEntry(
                row.node_id,
                row.name or "",
                tuple(sorted(row.projects)),
                state,
                ages.get(row.node_id),
                labels,
                resources,
                tuple(hub.fleet.runs_of(row.node_id)),
            )
        )
    return entries
