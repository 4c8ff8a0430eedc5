"""Placement at the hub: what is said of each node beyond its live heartbeat, kept in hub.db.

Three things, each written to ``hub.db`` before the fleet acts on it, and given back to the
fleet when a hub starts (``restore``), so a restarted hub places runs as the one before did:

- the labels and resources each node reported last (written when they change, at most
  ``REPORT_WRITES`` times at once and then once a minute per node: a node that changes them
  at every heartbeat costs the disk little);
- labels an admin set from the hub (``label``): they override the node's own labels of the
  same key, until an admin removes them;
- cordons (``cordon``): a cordoned node is placed on by no run from the next round; the tasks
  it holds or has queued are answered as any others.

And when each node's newest certificate expires (``note_certificate``), for the inventory.

Labels from the hub are held to the node's rule (``placement.label_problem``, at most
``MAX_LABELS``); every change is authorized for admins (``Action.MANAGE_NODES``) and audited.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from pollinate.errors import PollinateError, StorageError
from pollinate.hub.access import Action, Caller
from pollinate.hub.audit import OK, Audit
from pollinate.hub.fleet import Fleet
from pollinate.hub.rate_limit import RateLimiter
from pollinate.hub.state import HubState, LabelSource
from pollinate.placement import MAX_LABELS, PlacementError, label_problem
from pollinate.security.certificates import certificate_expiry

log = logging.getLogger("pollinate.hub")

_EXAMPLE = "hub.label_node(7, {'region': 'eu'}, ['draining'])"

REPORT_WRITES = 4
"""Writes of one node's reported labels and resources the hub makes at once; then one a
minute. A change refused a write is written with the first heartbeat allowed one."""


class NodePlacement:
    """Labels, cordons and reports of the hub's nodes, kept in ``state`` and told to ``fleet``."""

    def __init__(self, state: HubState, fleet: Fleet, audit: Audit) -> None:
        self.state, self.fleet, self.audit = state, fleet, audit
        self._reported: dict[int, tuple[dict[str, str], dict[str, str]]] = {}  # as kept
        self._writes = RateLimiter(REPORT_WRITES, 1 / 60)
        self.restore()

    def restore(self) -> None:
        """Tell the fleet what the last hub on this data dir knew of each node."""
        cordoned = {row.node_id for row in self.state.nodes() if row.cordoned}
        kept = self.state.node_labels()
        for node_id in sorted(set(kept) | cordoned):
            sources = kept.get(node_id, {})
            labels = sources.get(LabelSource.NODE, {})
            resources = sources.get(LabelSource.RESOURCES, {})
            self._reported[node_id] = (labels, resources)
            hub_labels = sources.get(LabelSource.HUB, {})
            self.fleet.restore(node_id, labels, resources, hub_labels, node_id in cordoned)

    def heard(self, node_id: int, labels: Mapping[str, str], resources: Mapping[str, str]) -> None:
        """Keep what the node's heartbeat reported, if it changed. A disk that refuses is
        logged: placement goes on from the heartbeat; only a restart would forget it."""
        report = (dict(labels), dict(resources))
        if self._reported.get(node_id) == report or not self._writes.allow(str(node_id)):
            return
        by_source = {LabelSource.NODE: report[0], LabelSource.RESOURCES: report[1]}
        try:
            self.state.set_node_labels(node_id, by_source)
        except StorageError as exc:
            log.warning("could not keep node %d's labels and resources: %s", node_id, exc)
            return
        self._reported[node_id] = report

    def keeps(self, node_id: int, labels: Mapping[str, str], resources: Mapping[str, str]) -> bool:
        """Whether these are the labels and resources kept for the node: ``heard`` would
        write nothing."""
        return self._reported.get(node_id) == (labels, resources)

    def label(
        self, node_id: int, set: Mapping[str, str], remove: Sequence[str], caller: Caller
    ) -> dict[str, str]:
        """``Hub.label_node``."""
        target = f"node {node_id}"
        self.audit.authorize(caller, Action.MANAGE_NODES, None, target)
        self._require_known(node_id, "labelled")
        labels = self.fleet.hub_labels(node_id)
        for key in _checked_removals(remove, set):
            labels.pop(key, None)
        labels.update(_checked_labels(set))
        if len(labels) > MAX_LABELS:
            raise PlacementError(
                f"node {node_id} would have {len(labels)} labels from the hub, over the limit "
                f"of {MAX_LABELS} (pollinate.placement.MAX_LABELS).\nHint: remove some first "
                f"({_EXAMPLE})."
            )
        self.state.set_node_labels(node_id, {LabelSource.HUB: labels})
        effective = self.fleet.set_hub_labels(node_id, labels)
        change = " ".join([*(f"{k}={v}" for k, v in set.items()), *(f"-{k}" for k in remove)])
        log.info("node %d labelled by %s: %s", node_id, caller.name, change)
        self.audit.record(caller.name, "label node", "", f"{target}: {change}", OK)
        return effective

    def cordon(self, node_id: int, cordoned: bool, caller: Caller) -> None:
        """``Hub.cordon_node``."""
        target = f"node {node_id}"
        self.audit.authorize(caller, Action.MANAGE_NODES, None, target)
        if not isinstance(cordoned, bool):
            raise TypeError(f"cordoned must be a bool, got {cordoned!r}.\nHint: {_CORDON}")
        self._require_known(node_id, "cordoned" if cordoned else "uncordoned")
        self.state.cordon_node(node_id, cordoned, caller.name)
        self.fleet.cordon(node_id, cordoned)
        action = "cordon node" if cordoned else "uncordon node"
        log.info("node %d %sed by %s", node_id, action.split()[0], caller.name)
        self.audit.record(caller.name, action, "", target, OK)

    def note_certificate(self, node_id: int, certificate_pem: bytes) -> None:
        """Keep when the node's newest certificate expires (it was just signed). Best effort:
        the inventory shows an expiry the hub could not keep as unknown."""
        try:
            self.state.note_certificate(node_id, certificate_expiry(certificate_pem).timestamp())
        except StorageError as exc:
            log.warning("could not keep when node %d's certificate expires: %s", node_id, exc)

    def _require_known(self, node_id: int, what: str) -> None:
        if not self.state.known_node(node_id):
            raise PollinateError(
                f"no node {node_id}: nothing was {what}.\nHint: `pollinate nodes` lists the nodes"
            )


_CORDON = "hub.cordon_node(7, True) cordons node 7; hub.cordon_node(7, False) uncordons it"


def _checked_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """``labels`` if each is a label a node could report; TypeError or PlacementError."""
    if not isinstance(labels, Mapping):
        raise TypeError(f"set must be a dict of labels, got {labels!r}.\nHint: {_EXAMPLE}")
    if len(labels) > MAX_LABELS:
        raise PlacementError(
            f"{len(labels)} labels to set, over the limit of {MAX_LABELS}.\nHint: {_EXAMPLE}"
        )
    for key, value in labels.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(
                f"labels are str=str, got {key!r}={value!r}.\nHint: {_EXAMPLE} (numbers "
                "as text: {'gpus': '2'})"
            )
        if problem := label_problem(key, value):
            raise PlacementError(f"label {problem}.\nHint: {_EXAMPLE}")
    return dict(labels)


def _checked_removals(keys: Sequence[str], setting: Mapping[str, str]) -> list[str]:
    """``keys`` if each could be a label's key and none is also set; else an error."""
    if isinstance(keys, str) or not isinstance(keys, Sequence):
        raise TypeError(f"remove must be a list of keys, got {keys!r}.\nHint: {_EXAMPLE}")
    if len(keys) > MAX_LABELS:
        raise PlacementError(
            f"{len(keys)} labels to remove, over the limit of {MAX_LABELS}.\nHint: {_EXAMPLE}"
        )
    for key in keys:
        if not isinstance(key, str):
            raise TypeError(f"label keys are str, got {key!r}.\nHint: {_EXAMPLE}")
        if problem := label_problem(key, "x"):
            raise PlacementError(f"label {problem}.\nHint: {_EXAMPLE}")
        if isinstance(setting, Mapping) and key in setting:
            raise PlacementError(
                f"label {key!r} is both set and removed.\nHint: set it, or remove it; not both."
            )
    return list(keys)
