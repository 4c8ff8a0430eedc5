"""The hub's Prometheus metrics: what its runs do, and what its fleet and runs are.

What runs do arrives as their loop events (``Hub.events``), counted as they come; what the
fleet and the runs are is read from the hub at each scrape. ``pollinate hub`` serves them on
``--metrics-address`` (loopback by default), at ``/metrics``.

The same server answers Kubernetes' probes (docs/kubernetes.md): ``/healthz`` is 200 while
the hub process serves HTTP at all (liveness), ``/readyz`` is 200 only once the hub serves
(its ports listen and the runs it found are resumed: ``Hub.serving``) and its data dir takes
a new file now (``HubState.check_writable``, the check new work makes); otherwise 503 with
the reason as one line of plain text.

Names follow Prometheus's conventions: a ``pollinate_`` prefix, the unit in the name, and
``_total`` on counters (the client library adds it). Labels take only values the hub made
(run ids, node ids, stages, states), never text a node sent, so a node cannot grow the
series without bound or write into them.
"""

from __future__ import annotations

import math
import socket
import time
from collections import Counter as Counter_
from collections.abc import Callable, Iterable, Iterator
from threading import Thread
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector

from pollinate.errors import PollinateError
from pollinate.hub.inventory import inventory
from pollinate.hub.state import RunStatus
from pollinate.loop.events import (
    Event,
    ReplyBounded,
    ReplyReceived,
    RoundFinished,
    Stage,
    StageStarted,
    TaskFailed,
    UpdateRejected,
)
from pollinate.loop.history import FailureKind
from pollinate.text import inert

if TYPE_CHECKING:
    from pollinate.hub.hub import Hub

ROUND_SECONDS_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
AGGREGATION_SECONDS_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 300)


class HubMetrics:
    """The hub's metrics in a registry of their own, kept current from its runs' events."""

    def __init__(self, hub: Hub) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.tasks = Counter(
            "pollinate_tasks", "Tasks sent to nodes.", ["run", "stage"], registry=registry
        )
        self.replies = Counter(
            "pollinate_replies",
            "Tasks that ended: outcome ok (a usable reply) or failed (an error, a timeout, "
            "a reply that failed validation).",
            ["run", "stage", "outcome"],
            registry=registry,
        )
        self.failures = Counter(
            "pollinate_failures",
            "Tasks that gave nothing usable, by kind: client (it raised or refused), timeout, "
            "lost (the node went silent or was revoked), invalid (a malformed reply), "
            "rejected (an update that failed validation).",
            ["run", "stage", "kind"],
            registry=registry,
        )
        self.rejections = Counter(
            "pollinate_rejected_updates",
            "Fit updates that arrived and were left out by validation or the strategy.",
            ["run"],
            registry=registry,
        )
        self.bounded = Counter(
            "pollinate_bounded_replies",
            "Replies that counted, bounded to their fair share (examples, norm, distance).",
            ["run", "stage"],
            registry=registry,
        )
        self.rounds = Counter(
            "pollinate_rounds",
            "Rounds completed (round 0 included); applied=false kept the previous model.",
            ["run", "applied"],
            registry=registry,
        )
        self.round_seconds = Histogram(
            "pollinate_round_duration_seconds",
            "Wall time of each completed round.",
            ["run"],
            buckets=ROUND_SECONDS_BUCKETS,
            registry=registry,
        )
        self.aggregation_seconds = Histogram(
            "pollinate_aggregation_duration_seconds",
            "Time each completed round spent screening and folding updates and finishing "
            "the aggregate (part of the round's duration).",
            ["run"],
            buckets=AGGREGATION_SECONDS_BUCKETS,
            registry=registry,
        )
        self.last_round = Gauge(
            "pollinate_run_round",
            "The last completed round of each run.",
            ["run"],
            registry=registry,
        )
        self.epsilon = Gauge(
            "pollinate_dp_epsilon",
            "Differential privacy: the epsilon a run has spent so far.",
            ["run"],
            registry=registry,
        )
        registry.register(_HubState(hub))
        self.hub = hub
        self._unsubscribe = hub.events.subscribe(self.on_event)

    def on_event(self, run_id: str, event: Event) -> None:
        """Count one of a run's events."""
        if isinstance(event, StageStarted):
            self.tasks.labels(run_id, event.stage).inc(event.tasks)
        elif isinstance(event, ReplyReceived):
            outcome = "ok" if event.ok else "failed"
            self.replies.labels(run_id, event.stage, outcome).inc()
        elif isinstance(event, TaskFailed):
            self.failures.labels(run_id, event.stage, event.kind).inc()
        elif isinstance(event, UpdateRejected):
            self.failures.labels(run_id, Stage.FIT, FailureKind.REJECTED).inc()
            self.rejections.labels(run_id).inc()
        elif isinstance(event, ReplyBounded):
            self.bounded.labels(run_id, event.stage).inc()
        elif isinstance(event, RoundFinished):
            self._round(run_id, event)

    def _round(self, run_id: str, event: RoundFinished) -> None:
        record = event.record
        self.rounds.labels(run_id, str(record.applied).lower()).inc()
        self.round_seconds.labels(run_id).observe(record.seconds)
        self.aggregation_seconds.labels(run_id).observe(record.aggregation_seconds)
        self.last_round.labels(run_id).set(record.round)
        epsilon = record.fit.get("dp_epsilon")
        if isinstance(epsilon, int | float) and math.isfinite(epsilon):
            self.epsilon.labels(run_id).set(epsilon)

    def serve(self, address: str) -> MetricsServer:
        """Serve ``/metrics``, ``/healthz`` and ``/readyz`` on ``address`` (``HOST:PORT``;
        port 0 picks a free one)."""
        host, _, port = address.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        server_class = _ServerV6 if ":" in host else ThreadingWSGIServer
        app = _with_probes(make_wsgi_app(self.registry), self.hub)
        server = make_server(host, int(port), app, server_class, handler_class=_Quiet)
        thread = Thread(target=server.serve_forever, name="hub-metrics", daemon=True)
        thread.start()
        return MetricsServer(server, thread)

    def close(self) -> None:
        self._unsubscribe()


class MetricsServer:
    """The HTTP server of ``/metrics``, until ``stop``."""

    def __init__(self, server: WSGIServer, thread: Thread) -> None:
        self._server, self._thread = server, thread
        self.port = int(server.server_address[1])

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5.0)


def readiness_problem(hub: Hub) -> str | None:
    """Why ``hub`` should not be sent traffic now, or None when it is ready."""
    if not hub.serving.is_set():
        return "the hub is not serving yet: its ports are opening or its runs resuming"
    try:
        hub.state.check_writable()
    except (PollinateError, OSError) as exc:
        return f"the hub's data dir refuses writes: {exc}"
    return None


_App = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def _with_probes(metrics: _App, hub: Hub) -> _App:
    """The WSGI app: the probes, and ``metrics`` for every other path."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path not in ("/healthz", "/readyz"):
            return metrics(environ, start_response)
        problem = readiness_problem(hub) if path == "/readyz" else None
        status = "503 Service Unavailable" if problem else "200 OK"
        body = (inert(problem) if problem else "ok").encode() + b"\n"
        headers = [("Content-Type", "text/plain; charset=utf-8"), ("Cache-Control", "no-store")]
        start_response(status, [*headers, ("Content-Length", str(len(body)))])
        return [body]

    return app


class _ServerV6(ThreadingWSGIServer):
    address_family = socket.AF_INET6


class _Quiet(WSGIRequestHandler):
    """No line per request: a probe every few seconds would fill the hub's log."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _HubState(Collector):
    """What the fleet and the runs are, read at each scrape."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.started = time.time()

    def collect(self) -> Iterator[Metric]:
        entries = inventory(self.hub)
        nodes = GaugeMetricFamily(
            "pollinate_nodes",
            "Nodes the hub knows, by state (online, stale, offline, cordoned, revoked) and "
            "project (a node of two projects counts in each).",
            labels=["state", "project"],
        )
        counts = Counter_(
            (entry.state.value, project) for entry in entries for project in entry.projects
        )
        for (state, project), count in sorted(counts.items()):
            nodes.add_metric([state, project], count)
        yield nodes
        age = GaugeMetricFamily(
            "pollinate_node_heartbeat_age_seconds",
            "Seconds since each node was last heard from (nodes never heard are left out).",
            labels=["node"],
        )
        expiry = GaugeMetricFamily(
            "pollinate_node_certificate_expiry_seconds",
            "Seconds until each node's certificate expires (negative: expired; nodes whose "
            "expiry the hub does not know are left out).",
            labels=["node"],
        )
        now = time.time()
        for entry in entries:
            if entry.heartbeat_age is not None:
                age.add_metric([str(entry.node_id)], entry.heartbeat_age)
            if entry.cert_expires is not None:
                expiry.add_metric([str(entry.node_id)], entry.cert_expires - now)
        yield age
        yield expiry
        sent = CounterMetricFamily(
            "pollinate_task_array_bytes",
            "Array bytes of the tasks nodes took (the models sent).",
            value=self.hub.fleet.array_bytes_sent,
        )
        received = CounterMetricFamily(
            "pollinate_reply_array_bytes",
            "Array bytes of the replies the hub recorded (the updates received).",
            value=self.hub.array_bytes_received,
        )
        yield sent
        yield received
        runs = GaugeMetricFamily(
            "pollinate_runs", "Runs on this hub, by status.", labels=["status"]
        )
        statuses = [row.status for row in self.hub.state.runs()]
        for status in RunStatus:
            runs.add_metric([status.value], statuses.count(status))
        yield runs
        yield GaugeMetricFamily(
            "pollinate_hub_start_time_seconds",
            "When this hub process started (Unix time): a restart moves it.",
            value=self.started,
        )
