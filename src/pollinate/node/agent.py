"""NodeAgent: pulls tasks from the hub, runs the app's client on local data, pushes replies.

The node dials out; the hub never dials in. When the hub is away the agent retries with
exponential backoff (with jitter, so a fleet does not reconnect in lockstep).

Each change of the node's state (connected, serving run R, round N of it, the hub lost and
being reconnected to) is one INFO record of the ``pollinate.node.state`` logger, which
``pollinate node`` shows without ``-v``; everything else logs to ``pollinate.node``.
"""

from __future__ import annotations

import logging
import random
import secrets
import threading
import time
import tomllib
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from pollinate.app import app_hash, load_app
from pollinate.client.client import Context, handle
from pollinate.errors import AppError, PollinateError
from pollinate.node.health import HealthServer
from pollinate.node.metrics import NodeMetrics
from pollinate.node.resources import detect_resources, utilisation
from pollinate.records import Config, Message
from pollinate.secagg.identity import certificate_identity
from pollinate.secagg.messages import SecAggError
from pollinate.secagg.node import SecAggNode
from pollinate.secagg.node import handlers as secagg_handlers
from pollinate.security import NodeCredentials, SecurityError, certificate_expiry, should_renew
from pollinate.transport.client import (
    FleetClient,
    HubRefused,
    HubUnavailable,
    PulledTask,
    diagnose,
)

log = logging.getLogger("pollinate.node")
state = logging.getLogger("pollinate.node.state")

PULL_WAIT = 50.0
"""Seconds a long-poll waits for a task (the hub holds it up to 60): an idle node costs the hub
one call per wait, and a task queued meanwhile is answered at once."""


class NodeAgent:
    """Serves the clients of one or more apps to the hub at ``hub_address`` until ``stop`` is
    set. A task names its app by hash; a task of an app the node does not hold is refused,
    saying which it holds.

    ``node_config`` holds TOML literals (``partition-id = "3"``); ``partition-id`` and
    ``num-partitions`` fill the client's Context. ``labels`` and ``resources`` (over those
    ``resources.detect_resources`` finds) go with every heartbeat, for placement.
    ``health_address`` (``HOST:PORT``, port 0 picks a free one: ``health_port``) serves
    ``/healthz`` and ``/readyz`` (``node/health.py``) from construction until ``run`` ends.
    """

    def __init__(
        self,
        hub_address: str,
        app_dir: str | Path | Sequence[str | Path],
        node_config: dict[str, str] | None = None,
        *,
        name: str = "",
        credentials: NodeCredentials | None = None,
        credentials_dir: Path | None = None,
        max_backoff: float = 30.0,
        labels: dict[str, str] | None = None,
        resources: dict[str, str] | None = None,
        health_address: str | None = None,
    ) -> None:
        dirs = [app_dir] if isinstance(app_dir, str | Path) else list(app_dir)
        if not dirs:
            raise AppError("a node serves at least one app.\nHint: pollinate node --app APP_DIR")
        self.apps = {app_hash(path): load_app(path) for path in dirs}
        """The apps this node serves, by hash, in the order given."""
        self.app_hash = next(iter(self.apps))  # the first: what heartbeats name
        self._app = self.apps[self.app_hash]  # the app of the task being answered
        self.node_config_text = dict(node_config or {})
        self.node_config = parse_node_config(self.node_config_text)
        self.name = name
        self.labels = dict(labels or {})
        # detected at start; what is stated by hand (--resources gpus=2) overrides it
        self.resources = {**detect_resources(), **(resources or {})}
        self.credentials = credentials
        self.credentials_dir = credentials_dir
        self.client = FleetClient(hub_address, credentials)
        self.max_backoff = max_backoff
        self.stop = threading.Event()
        self.session = secrets.token_hex(8)  # tells the hub this process from an earlier one
        self.interval = 5.0
        self._beating: threading.Thread | None = None
        self._secagg: SecAggNode | None = None
        self._handlers = secagg_handlers(self._answer_app, self._secure_node)
        self._connected = False
        self._serving: tuple[str, int] | None = None  # the (run, round) of the last task
        self._heard: float | None = None  # time.monotonic() of the last answered heartbeat
        self._health: HealthServer | None = None
        self.metrics = NodeMetrics(lambda: {**self.resources, **utilisation()})
        if health_address is not None:
            self._health = HealthServer(
                health_address, self.liveness_problem, self.ready_problem, self.metrics.exposition
            )

    @property
    def health_port(self) -> int | None:
        """The port ``/healthz`` and ``/readyz`` are served on, or None when not served."""
        return None if self._health is None else self._health.port

    def liveness_problem(self) -> str | None:
        """Why this agent is not live (it stopped), or None."""
        return "the node agent stopped" if self.stop.is_set() else None

    def ready_problem(self) -> str | None:
        """Why this node cannot take a task now, or None: it must be enrolled (a node id,
        a certificate still valid), have heard the hub lately, and have its app loaded."""
        if self.stop.is_set():
            return "the node agent stopped"
        if self.client.node_id is None or self._heard is None:
            return f"not connected yet: no heartbeat answered by the hub at {self.client.address}"
        if self.credentials is not None:
            expiry = certificate_expiry(self.credentials.cert_pem)
            if expiry <= datetime.now(UTC):
                return f"the node certificate expired at {expiry:%Y-%m-%d %H:%M:%S} UTC"
        silent = time.monotonic() - self._heard
        if silent > max(3 * self.interval, 3.0):  # three heartbeats missed
            address = self.client.address
            return f"the hub at {address} has not answered a heartbeat for {silent:.0f}s"
        return None

    def run(self) -> None:
        """Serve until ``self.stop`` is set, reconnecting whenever the hub is away."""
        try:
            self._run()
        finally:
            self.stop.set()
            if self._health is not None:
                self._health.stop()

    def _run(self) -> None:
        backoff = 0.5
        while not self.stop.is_set():
            try:
                self._serve()
                backoff = 0.5
            except HubUnavailable as exc:
                if self.stop.is_set():
                    return  # shutdown() closed the channel under a waiting pull
                self._raise_if_refused(exc)
                if self._connected or backoff == 0.5:
                    state.info("hub at %s unavailable; reconnecting", self.client.address)
                self._connected = False
                delay = backoff * random.uniform(0.5, 1.5)
                log.warning("%s; retrying in %.1fs", exc, delay)
                self.stop.wait(delay)
                backoff = min(backoff * 2, self.max_backoff)
            except HubRefused:
                if self.stop.is_set():
                    return
                raise

    def shutdown(self) -> None:
        """Stop now: a pull waiting at the hub is cancelled rather than waited out."""
        self.stop.set()
        self.client.close()

    def _raise_if_refused(self, exc: HubUnavailable) -> None:
        """Tell a refused certificate apart from a hub that is away: the first is final."""
        if self.credentials is None:
            return
        if "CERTIFICATE_VERIFY_FAILED" in str(exc):
            raise SecurityError(
                "the hub's certificate is not signed by the CA this node enrolled with: the "
                "hub's CA changed, or this is another hub. Re-enrol with a new token "
                "(`pollinate token create` on the hub, then --token)."
            )
        try:
            reason = diagnose(self.client.address, self.credentials)
        except PollinateError:
            return  # the hub is really away: retry
        if reason is not None:
            raise SecurityError(f"the hub refuses this node's certificate: {reason}")

    def _serve(self) -> None:
        self._heartbeat()
        if self._beating is None:  # one heartbeat thread for the agent's life, paced by the hub
            self._beating = threading.Thread(target=self._beat, name="node-heartbeat", daemon=True)
            self._beating.start()
        state.info("node %s connected as node %d", self.name, self.client.node_id)
        self._connected = True
        while not self.stop.is_set():
            self._answer_one(self.client.pull_task(PULL_WAIT))

    def _answer_one(self, task: PulledTask | None) -> None:
        """Answer one task. Its arrays go when this returns, so that the next task can be
        decoded into them (``wire.Recycler``) unless the app kept them."""
        if task is None:
            return
        self._note_task(task.message)
        started = time.monotonic()
        reply = self._answer(task)
        self.metrics.answered(task.message, reply, time.monotonic() - started)
        self._push(reply)

    def _note_task(self, task: Message) -> None:
        """One state line when a task starts another run, and one per round of it."""
        if self._serving is None or self._serving[0] != task.run_id:
            state.info("node %d serving run %s", self.client.node_id, task.run_id)
        if self._serving != (task.run_id, task.round):
            state.info("node %d: run %s round %d", self.client.node_id, task.run_id, task.round)
        self._serving = (task.run_id, task.round)

    def _heartbeat(self) -> None:
        self.interval = self.client.heartbeat(
            self.app_hash,
            self.node_config_text,
            self.name,
            self.session,
            labels=self.labels,
            resources={**utilisation(), **self.resources},  # what was stated wins
        )
        self._heard = time.monotonic()

    def _beat(self) -> None:
        while not self.stop.wait(self.interval):
            try:
                self._heartbeat()
                self._renew_if_due()
            except PollinateError as exc:
                log.warning("heartbeat failed: %s", exc)

    def _renew_if_due(self) -> None:
        """Swap in a renewed certificate before the old one expires; a task in flight keeps
        the old channel until it ends, so a run is not interrupted."""
        if self.credentials is None or not should_renew(self.credentials.cert_pem):
            return
        renewed = self.client.renew(self.credentials)
        if self.credentials_dir is not None:
            renewed.save(self.credentials_dir)
        client = FleetClient(self.client.address, renewed)
        client.node_id = self.client.node_id
        self.credentials, self.client = renewed, client
        log.info("node %s renewed its certificate", client.node_id)

    def _answer(self, task: PulledTask) -> Message:
        app = self.apps.get(task.app_hash)
        if app is None:
            held = ", ".join(f"{digest[:12]} ({held.path})" for digest, held in self.apps.items())
            reason = (
                f"node {self.client.node_id} refuses the task: the run needs app "
                f"{task.app_hash[:12]} but this node has {held}; install the same app "
                "version on every node (`pollinate node --app DIR` repeats)"
            )
            log.error(reason)
            return task.message.reply(error=reason)
        self._app = app  # tasks are answered one at a time
        node_id = self.client.node_id or 0
        context = Context(
            node_id=node_id,
            partition_id=int(self.node_config.get("partition-id", node_id)),
            num_partitions=int(self.node_config.get("num-partitions", 1)),
            node_config=self.node_config,
            run_config=task.run_config,
        )
        return self._handlers.answer(context, task.message)

    def _answer_app(self, context: Context, instruction: Message) -> Message:
        return handle(self._app.client_fn, context, instruction)

    def _secure_node(self, context: Context) -> SecAggNode:
        """This node's side of secure aggregation, signing with its certificate key."""
        if self.credentials is None:
            raise SecAggError(
                "this node has no certificate to sign its keys with; secure aggregation "
                "needs nodes enrolled over mTLS (`pollinate node --token`)"
            )
        if self._secagg is None or self._secagg.identity.credential != self.credentials.cert_pem:
            node = SecAggNode(context.node_id, certificate_identity(self.credentials))
            if self._secagg is not None:  # a renewed certificate: keep the rounds under way
                node.adopt(self._secagg)
            self._secagg = node
        return self._secagg

    def _push(self, reply: Message) -> None:
        """Push, retrying while the hub is away; a refusal is logged, not retried."""
        backoff = 0.5
        while not self.stop.is_set():
            try:
                self.client.push_reply(reply)
                return
            except HubRefused as exc:
                log.warning("hub refused the reply to %s: %s", reply.task_id, exc)
                return
            except HubUnavailable:
                self.stop.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff)


def parse_node_config(items: dict[str, str]) -> Config:
    """TOML literals to typed values; a bare word is a string."""
    config: Config = {}
    for key, text in items.items():
        try:
            config[key] = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            config[key] = text
    return config
