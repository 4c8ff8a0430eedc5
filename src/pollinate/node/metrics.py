"""A node's own Prometheus metrics, served at ``/metrics`` beside its probes
(``pollinate node --health-address``; docs/monitoring.md).

What the node did (tasks by kind and outcome, seconds spent answering them, array bytes in
and out) is counted as it answers; what it has (its resources and their live use) is read at
each scrape. Labels take only values the node itself made (a task's kind, ``ok`` or
``failed``, a resource's name), never text from the hub.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pollinate.records import Message


class NodeMetrics:
    """The node's metrics in a registry of their own; ``resources`` is read at each scrape."""

    def __init__(self, resources: Callable[[], dict[str, str]]) -> None:
        self.registry = CollectorRegistry()
        self.tasks = Counter(
            "pollinate_node_tasks",
            "Tasks this node answered, by kind (fit, evaluate, ...) and outcome (ok, failed).",
            ["kind", "outcome"],
            registry=self.registry,
        )
        self.seconds = Counter(
            "pollinate_node_task_seconds",
            "Seconds this node spent answering tasks (training and evaluating), by kind.",
            ["kind"],
            registry=self.registry,
        )
        self.received = Counter(
            "pollinate_node_received_array_bytes",
            "Array bytes of the tasks this node took (models received).",
            registry=self.registry,
        )
        self.sent = Counter(
            "pollinate_node_sent_array_bytes",
            "Array bytes of the replies this node sent (updates).",
            registry=self.registry,
        )
        self.registry.register(_Resources(resources))

    def answered(self, task: Message, reply: Message, seconds: float) -> None:
        """Count one task and the reply the node made for it."""
        kind = str(task.kind)
        self.tasks.labels(kind, "failed" if reply.error else "ok").inc()
        self.seconds.labels(kind).inc(seconds)
        self.received.inc(0 if task.arrays is None else task.arrays.nbytes)
        self.sent.inc(0 if reply.arrays is None else reply.arrays.nbytes)

    def exposition(self) -> bytes:
        """The metrics in Prometheus's text format."""
        return generate_latest(self.registry)


class _Resources(Collector):
    """The node's numeric resources, as gauges named by the resource."""

    def __init__(self, resources: Callable[[], dict[str, str]]) -> None:
        self.resources = resources

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(
            "pollinate_node_resource",
            "The node's numeric resources and their live use (cpus, memory_gib, gpus, "
            "cpu_load, memory_available_gib, ...), as placement sees them.",
            labels=["resource"],
        )
        for name, value in sorted(self.resources().items()):
            try:
                gauge.add_metric([name], float(value))
            except ValueError:
                continue  # os=Linux, gpu_model=...: not a number
        yield gauge
