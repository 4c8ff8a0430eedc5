"""The hub's Prometheus metrics: what its runs do, and what its fleet and runs are.

What runs do arrives as their loop events (``Hub.events``), counted as they come; what the
fleet and the runs are is read from the hub at each scrape. ``pollinate hub`` serves them on
``--metrics-address`` (loopback by default), at ``/metrics``.

Names follow Prometheus's conventions: a ``pollinate_`` prefix, the unit in the name, and
``_total`` on counters (the client library adds it). Labels take only values the hub made
(run ids, node ids, stages, states), never text a node sent, so a node cannot grow the
series without bound or write into them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from threading import Thread
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pollinate.hub.state import RunStatus
from pollinate.loop.events import (
    Event,
    ReplyBounded,
    ReplyReceived,
    RoundFinished,
    StageStarted,
    UpdateRejected,
)

if TYPE_CHECKING:
    from pollinate.hub.hub import Hub

ROUND_SECONDS_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


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
        self._unsubscribe = hub.events.subscribe(self.on_event)

    def on_event(self, run_id: str, event: Event) -> None:
        """Count one of a run's events."""
        if isinstance(event, StageStarted):
            self.tasks.labels(run_id, event.stage).inc(event.tasks)
        elif isinstance(event, ReplyReceived):
            outcome = "ok" if event.ok else "failed"
            self.replies.labels(run_id, event.stage, outcome).inc()
        elif isinstance(event, UpdateRejected):
            self.rejections.labels(run_id).inc()
        elif isinstance(event, ReplyBounded):
            self.bounded.labels(run_id, event.stage).inc()
        elif isinstance(event, RoundFinished):
            self._round(run_id, event)

    def _round(self, run_id: str, event: RoundFinished) -> None:
        record = event.record
        self.rounds.labels(run_id, str(record.applied).lower()).inc()
        self.round_seconds.labels(run_id).observe(record.seconds)
        self.last_round.labels(run_id).set(record.round)
        epsilon = record.fit.get("dp_epsilon")
        if isinstance(epsilon, int | float) and math.isfinite(epsilon):
            self.epsilon.labels(run_id).set(epsilon)

    def serve(self, address: str) -> MetricsServer:
        """Serve ``/metrics`` on ``address`` (``HOST:PORT``; port 0 picks a free one)."""
        host, _, port = address.rpartition(":")
        server, thread = start_http_server(int(port), host or "127.0.0.1", self.registry)
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


class _HubState(Collector):
    """What the fleet and the runs are, read at each scrape."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.started = time.time()

    def collect(self) -> Iterator[Metric]:
        fleet = self.hub.fleet
        ages = fleet.heartbeat_ages()
        nodes = GaugeMetricFamily(
            "pollinate_nodes", "Nodes the hub knows, by state.", labels=["state"]
        )
        alive = set(fleet.alive())
        nodes.add_metric(["alive"], len(alive))
        nodes.add_metric(["silent"], len(ages) - len(alive & ages.keys()))
        yield nodes
        age = GaugeMetricFamily(
            "pollinate_node_heartbeat_age_seconds",
            "Seconds since each node was last heard from (nodes never heard are left out).",
            labels=["node"],
        )
        for node, seconds in sorted(ages.items()):
            if seconds is not None:
                age.add_metric([str(node)], seconds)
        yield age
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
