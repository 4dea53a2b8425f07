"""Goal -> tally latency under a steady load, and where its milliseconds go.

A tally's ``as_of_ts`` is the newest event time among its counters; the load generator stamps events
with the wall clock, so receive time minus ``as_of_ts`` is the whole path: the generator's tick and
linger, the broker's hold of the worker's fetch, the wait for the cycle in progress, the cycle
(parse, process, produce, commit), the wait for the tally thread's next tick, its round (Redis,
produce, the broker's acknowledgement), and the reader's own fetch. For the worker in this process
the breakdown comes from its metrics over the run (means are exact; p99 is the histogram bucket
that holds it).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson
from confluent_kafka import Consumer, Producer
from prometheus_client import Histogram

from attribution.devkit.bench_load import SETTINGS
from attribution.devkit.traffic import Traffic
from attribution.infra.config import Config
from attribution.infra.metrics import Metrics
from attribution.runtime.worker import Worker

LOAD_TICK_S = 0.02  # the generator produces a tick's events at once, stamped with the tick's time
READER_FETCH_WAIT_MS = 5


class InThread:
    """The confluent worker in a thread of this process, once it has joined its group; calling it
    stops the worker. ``metrics`` are the worker's own."""

    def __init__(self, config: Config) -> None:
        self.worker = Worker(config)
        self.metrics: Metrics | None = self.worker.metrics
        self.thread = threading.Thread(target=self.worker.run, daemon=True)
        self.thread.start()
        while not self.worker.assigned:
            time.sleep(0.01)

    def __call__(self) -> None:
        self.worker.stop()
        self.thread.join(60)


def latency(
    config: Config, rate: int, seconds: float, start: Callable[[Config], Callable[[], None]] = InThread
) -> dict[str, Any]:
    """p50 / p99 / max of goal -> tally at ``rate`` events/s for ``seconds``, with the breakdown when
    the worker runs in this process."""
    stop_worker = start(config)
    reader = Consumer(  # the reader must not add latency of its own: fetches answered at once
        config.kafka(
            {
                "group.id": f"lat-{uuid.uuid4().hex[:6]}",
                "auto.offset.reset": "latest",
                "session.timeout.ms": 6000,
                "fetch.wait.max.ms": READER_FETCH_WAIT_MS,
            }
        )
    )
    reader.subscribe([config.topic("tallies")])
    while not reader.assignment():
        reader.consume(100, 0.1)
    stop = threading.Event()
    producer = Producer(config.kafka({"linger.ms": 2}))
    traffic = Traffic(seed=9, users=50_000, project=SETTINGS["project_id"])

    def load() -> None:
        while not stop.is_set():
            for kind, key, value in traffic.events(int(time.time() * 1000), int(rate * LOAD_TICK_S)):
                producer.produce(config.topic(kind), key=key.encode(), value=orjson.dumps(value))
            producer.poll(0)
            stop.wait(LOAD_TICK_S)

    loader = threading.Thread(target=load, daemon=True)
    loader.start()
    samples: list[float] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for m in reader.consume(1000, 0.1):
            if m.error() is None and m.value():
                samples.append(time.time() * 1000 - orjson.loads(m.value() or b"{}")["as_of_ts"])
    stop.set()
    loader.join(5)
    reader.close()
    stop_worker()
    samples.sort()

    def pick(q: float) -> float:
        return round(samples[min(len(samples) - 1, int(q * len(samples)))], 1) if samples else 0.0

    out: dict[str, Any] = {
        "p50_ms": pick(0.5),
        "p99_ms": pick(0.99),
        "max_ms": pick(1.0),
        "samples": len(samples),
        "rate": rate,
        "tally_interval_ms": config.tally_interval_ms,
    }
    metrics = getattr(stop_worker, "metrics", None)
    if isinstance(metrics, Metrics):
        out["breakdown"] = breakdown(metrics, config)
    return out


def breakdown(m: Metrics, config: Config) -> dict[str, Any]:
    """Where a tally's milliseconds go, from the worker's histograms (mean ms, p99 bucket ms)."""
    stages = ("parse", "process", "produce", "commit", "total")
    records = _stats(m.batch_size, {}, unit=1.0)
    return {
        "cycle_ms": {stage: _stats(m.batch_seconds, {"stage": stage}) for stage in stages},
        "records_per_cycle_mean": records["mean"],
        "cycles": records["count"],
        "tally_round_ms": _stats(m.tally_seconds, {}),
        "tally_min_spacing_ms": config.tally_interval_ms,  # woken by each batch, at most this often
        "load_tick_wait_mean_ms": LOAD_TICK_S * 1000 / 2,
        "reader_fetch_wait_max_ms": READER_FETCH_WAIT_MS,
    }


def _stats(h: Histogram, labels: dict[str, str], unit: float = 1000.0) -> dict[str, float]:
    """Mean and p99 (the upper bound of the bucket holding it) of a histogram series, times ``unit``
    (seconds to ms by default)."""
    buckets: list[tuple[float, float]] = []
    total = count = 0.0
    for metric in h.collect():
        for s in metric.samples:
            if any(s.labels.get(k) != v for k, v in labels.items()):
                continue
            if s.name.endswith("_bucket"):
                buckets.append((float(s.labels["le"]), s.value))
            elif s.name.endswith("_sum"):
                total = s.value
            elif s.name.endswith("_count"):
                count = s.value
    p99 = next((le for le, c in sorted(buckets) if count and c >= 0.99 * count), float("inf"))
    return {
        "mean": round(unit * total / count, 2) if count else 0.0,
        "p99_le": round(unit * p99, 1) if p99 != float("inf") else -1.0,
        "count": count,
    }


def render(lat: dict[str, Any]) -> list[tuple[str, str]]:
    """Rows for the bench table: the breakdown of the in-process run, when there is one."""
    b = lat.get("breakdown")
    if not b:
        return []
    c, t = b["cycle_ms"], b["tally_round_ms"]
    return [
        (
            "  cycle (mean / p99 bucket, ms)",
            f"total {c['total']['mean']} / {c['total']['p99_le']}: parse {c['parse']['mean']}, "
            f"process {c['process']['mean']}, produce {c['produce']['mean']}, "
            f"commit {c['commit']['mean']}; {b['records_per_cycle_mean']:,} records per cycle "
            f"({b['cycles']:,.0f} cycles)",
        ),
        (
            "  around the cycle (ms)",
            f"tally round {t['mean']} / {t['p99_le']} (woken by the batch, >= {b['tally_min_spacing_ms']} apart), "
            f"fetch hold <= {lat.get('fetch_wait_ms', '?')}, load tick ~{b['load_tick_wait_mean_ms']}, "
            f"reader fetch <= {b['reader_fetch_wait_max_ms']}",
        ),
    ]
