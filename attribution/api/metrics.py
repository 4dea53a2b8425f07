"""Prometheus metrics of ``attribution serve``, on a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from attribution import __version__

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        Info("attribution_api_build", "Version of this API server", registry=r).info({"version": __version__})
        self.requests = Counter(
            "attribution_api_requests",
            "HTTP requests by route template, method and status code",
            ["route", "method", "code"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "attribution_api_request_seconds",
            "Time to answer an HTTP request (an event stream: until its first byte)",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.records = Counter(
            "attribution_api_records", "Records read from the output topics", ["topic"], registry=r
        )
        self.caught_up = Gauge(
            "attribution_api_caught_up",
            "1 once every partition of the followed topics was read to the end it had at start",
            registry=r,
        )
        self.stream_clients = Gauge(
            "attribution_api_stream_clients", "Clients connected to the event stream", registry=r
        )
        self.campaigns = Gauge("attribution_api_campaigns", "Campaign tallies held in memory", registry=r)
        self.conversions = Gauge(
            "attribution_api_conversions", "Conversion records held in memory", registry=r
        )
