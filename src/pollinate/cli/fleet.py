"""The hub's nodes: ``nodes`` lists them; ``node label``, ``cordon``, ``uncordon`` and
``revoke`` manage them (admins; docs/placement.md, docs/operations.md)."""

from __future__ import annotations

import json
import time
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from pollinate.cli.console import console, fail
from pollinate.cli.hubs import (
    CredentialsOption,
    HubOption,
    checked_selector,
    control_client,
    refused_hint,
)
from pollinate.errors import PollinateError
from pollinate.hub.inventory import NodeEntry
from pollinate.text import MAX_LINE, MAX_NAME, inert

NodeId = Annotated[int, typer.Argument(help="The node, as `pollinate nodes` lists it.")]


SHOWN_RESOURCES = ("cpus", "memory_gib", "gpus", "gpu_model", "os", "arch")
"""The resources ``pollinate nodes`` shows in its table (``--json`` has them all)."""


def nodes_command(
    hub: HubOption = None,
    credentials: CredentialsOption = None,
    project: Annotated[
        str, typer.Option(metavar="PROJECT", help="Only the nodes of this project.")
    ] = "",
    select: Annotated[
        str,
        typer.Option(
            metavar="SELECTOR",
            help="Only the nodes that match now, e.g. 'gpus>=1,region in (eu,ch)' "
            "(docs/placement.md).",
        ),
    ] = "",
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON list, every label and resource.")
    ] = False,
) -> None:
    """List the hub's nodes: labels, resources, state, when each was last heard from and the
    runs it has tasks of."""
    selector = checked_selector(select)
    try:
        nodes = control_client(hub, credentials).list_nodes(selector, project)
    except PollinateError as exc:
        raise fail(refused_hint(exc, hub, credentials)) from None
    if as_json:
        print(json.dumps([_node_json(n) for n in nodes], indent=2))
        return
    table = Table("node", "name", "state", "heard", "runs", "projects", "certificate")
    table.add_column("labels", overflow="fold")  # wrapped, never cut: they are what selects
    table.add_column("resources", overflow="fold")
    for n in nodes:
        heard = "-" if n.heartbeat_age is None else f"{n.heartbeat_age:.0f}s ago"
        shown = {k: n.resources[k] for k in SHOWN_RESOURCES if k in n.resources}
        # labels and names come from nodes: text, never markup
        table.add_row(
            str(n.node_id),
            Text(inert(n.name, MAX_NAME)),
            n.state.value,
            heard,
            Text(inert(",".join(n.runs) or "-", MAX_LINE)),
            Text(inert(",".join(n.projects), MAX_LINE)),
            _expiry(n.cert_expires),
            Text(inert(_pairs(n.labels), MAX_LINE)),
            Text(inert(_pairs(shown), MAX_LINE)),
        )
    console.print(table)


def _pairs(values: dict[str, str]) -> str:
    # a space between pairs, where the table wraps: no key or value holds one
    return " ".join(f"{key}={value}" for key, value in sorted(values.items()))


def _node_json(node: NodeEntry) -> dict[str, object]:
    return {
        "node_id": node.node_id,
        "name": node.name,
        "state": node.state.value,
        "heartbeat_age": node.heartbeat_age,
        "runs": list(node.runs),
        "projects": list(node.projects),
        "labels": node.labels,
        "resources": node.resources,
        "cert_expires": node.cert_expires,
    }


def _expiry(expires: float | None) -> str:
    if expires is None:
        return "-"
    days = (expires - time.time()) / 86400
    return "expired" if days <= 0 else f"{days:.1f} days"


def node_label(
    node_id: NodeId,
    labels: Annotated[
        list[str],
        typer.Argument(
            metavar="KEY=VALUE|KEY-...",
            help="Labels to set (region=eu) or, with a trailing '-', remove (region-).",
        ),
    ],
    hub: HubOption = None,
    credentials: CredentialsOption = None,
) -> None:
    """Set or remove a node's labels at the hub (admins). They override the node's own labels
    of the same key; runs whose selector they change see it from their next round."""
    set_labels, remove = {}, []
    for item in labels:
        key, sep, value = item.partition("=")
        if sep:
            set_labels[key] = value
        elif item.endswith("-") and len(item) > 1:
            remove.append(item[:-1])
        else:
            raise fail(f"{item!r} is neither KEY=VALUE nor KEY- (to remove KEY)")
    try:
        now = control_client(hub, credentials).label_node(node_id, set_labels, remove)
    except PollinateError as exc:
        raise fail(refused_hint(exc, hub, credentials)) from None
    console.print(Text(f"node {node_id} labels: {inert(_pairs(now), MAX_LINE) or '-'}"))


def node_cordon(
    node_id: NodeId, hub: HubOption = None, credentials: CredentialsOption = None
) -> None:
    """Take a node out of new placements (admins): it finishes the task it holds, then takes
    none until `pollinate node uncordon`."""
    _cordon(node_id, True, hub, credentials)


def node_uncordon(
    node_id: NodeId, hub: HubOption = None, credentials: CredentialsOption = None
) -> None:
    """Let a cordoned node take part in placements again (admins)."""
    _cordon(node_id, False, hub, credentials)


def _cordon(node_id: int, cordoned: bool, hub: str | None, credentials: CredentialsOption) -> None:
    try:
        control_client(hub, credentials).cordon_node(node_id, cordoned)
    except PollinateError as exc:
        raise fail(refused_hint(exc, hub, credentials)) from None
    console.print(f"node {node_id} {'cordoned' if cordoned else 'uncordoned'}")


def node_revoke(
    node_id: NodeId, hub: HubOption = None, credentials: CredentialsOption = None
) -> None:
    """Revoke a node (admins): its calls and renewal are refused from now on, its tasks fail
    with the reason and their runs go on without it."""
    try:
        control_client(hub, credentials).revoke_node(node_id)
    except PollinateError as exc:
        raise fail(refused_hint(exc, hub, credentials)) from None
    console.print(f"node {node_id} revoked")
