"""Prometheus metrics of one broker app, on a registry of its own (no global state)."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.packets_published = Counter(
            "m2kt_packets_published", "Packets stored (new, not re-publishes)", registry=self.registry
        )
        self.publish_refused = Counter(
            "m2kt_publish_refused", "Publishes refused, by problem type", ["type"], registry=self.registry
        )
        self.publish_seconds = Histogram(
            "m2kt_publish_seconds",
            "Time to check and store one publish",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.event_streams = Gauge("m2kt_event_streams_open", "Open SSE event streams", registry=self.registry)
        self.reports = Counter("m2kt_reports", "Student reports, by verdict", ["verdict"], registry=self.registry)
