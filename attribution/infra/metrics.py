"""Prometheus metrics of one worker, on a registry of its own (several workers can share a process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """All series the worker exports; names end in their unit (``_seconds``, ``_total``)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events = Counter(
            "attribution_events",
            "Input records by topic and outcome (applied, duplicate, replayed, ignored, late, dlq)",
            ["topic", "outcome"],
            registry=r,
        )
        self.dlq = Counter(
            "attribution_dlq", "Records sent to the DLQ, by source topic", ["topic"], registry=r
        )
        self.conversions = Counter(
            "attribution_conversions",
            "Conversion records published (new and corrected)",
            ["event", "basis"],
            registry=r,
        )
        self.amount_missing = Counter(
            "attribution_amount_missing",
            "Purchase conversions whose amount or quantity was missing or not numeric",
            ["event"],
            registry=r,
        )
        self.tallies = Counter("attribution_tallies_published", "Tally snapshots published", registry=r)
        self.batch_seconds = Histogram(
            "attribution_batch_seconds",
            "Time to process one batch, by stage",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.redis_seconds = Histogram(
            "attribution_redis_seconds",
            "Redis script call latency",
            ["op"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "attribution_batch_records",
            "Records per consumed batch",
            buckets=(1, 10, 100, 1000, 5000, 10000, 50000),
            registry=r,
        )
        self.lag = Gauge(
            "attribution_consumer_lag", "Records behind the partition end", ["topic", "partition"], registry=r
        )
        self.rebalances = Counter(
            "attribution_rebalances", "Partition assignments and revocations", ["kind"], registry=r
        )
        self.assigned = Gauge("attribution_assigned_partitions", "Input partitions owned now", registry=r)
        self.conflicts = Counter(
            "attribution_state_conflicts", "Batches retried after a CAS conflict", registry=r
        )
        self.recovered = Counter(
            "attribution_recovered_batches",
            "Partition batches this worker finished before reading the partition (its own after a "
            "restart, or the previous owner's after a rebalance)",
            registry=r,
        )
        self.settings_version = Gauge(
            "attribution_settings_version", "Settings version in force", ["project"], registry=r
        )
