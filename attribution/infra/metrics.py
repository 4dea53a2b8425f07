"""Prometheus metrics of one worker, on a registry of its own (several workers can share a process)."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
)
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from attribution import __version__, compiled

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """All series the worker exports; names end in their unit (``_seconds``, ``_total``)."""

    def __init__(self, registry: CollectorRegistry | None = None, runtime: str = "confluent") -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        # process_* (CPU, RSS, start time: restarts show as changes) and python_info, as on the
        # default registry; several workers in one process (tests) each get their own
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        Info("attribution_build", "Version, runtime and build of this worker", registry=r).info(
            {"version": __version__, "runtime": runtime, "build": compiled.BUILD}
        )
        self.ready = Gauge(
            "attribution_ready",
            "1 while the worker is ready (settings loaded, state generation checked, group joined)",
            registry=r,
        )
        self.redis_errors = Counter(
            "attribution_redis_errors",
            "Redis calls that failed (connection, timeout, OOM, READONLY...): the batch is retried",
            ["kind"],
            registry=r,
        )
        self.events = Counter(
            "attribution_events",
            "Input records by topic and outcome "
            "(applied, duplicate, replayed, ignored, visit, routed, retracted, late, dlq)",
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
            "Purchase conversions counted with amount null: the amount missing, not numeric or negative, "
            "or the quantity missing, not numeric, zero, negative or fractional",
            ["event"],
            registry=r,
        )
        self.tallies = Counter("attribution_tallies_published", "Tally snapshots published", registry=r)
        self.tally_seconds = Histogram(
            "attribution_tally_publish_seconds",
            "One round of the tally thread: read the dirty marks and counters, produce, wait for the "
            "broker's acknowledgements, acknowledge the marks",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
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
        self.cache_bytes = Gauge(
            "attribution_user_cache_bytes",
            "Estimated memory of the user states held between batches (ATTRIBUTION_CACHE_MB bounds it)",
            registry=r,
        )
        self.cache_users = Gauge(
            "attribution_user_cache_users", "User states held in memory between batches", registry=r
        )
        self.cache_lookups = Counter(
            "attribution_user_cache_lookups",
            "User states a batch needed: hit (in memory, or known to have no state) or miss (loaded)",
            ["result"],
            registry=r,
        )
        self.cache_evictions = Counter(
            "attribution_user_cache_evictions", "User states evicted to stay within the budget", registry=r
        )
        self.settings_version = Gauge(
            "attribution_settings_version", "Settings version in force", ["project"], registry=r
        )
