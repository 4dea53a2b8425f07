"""What a batch and the consumer tell Prometheus: stage times, outcomes, lag."""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Iterable
from itertools import pairwise

from confluent_kafka import Consumer, KafkaException, TopicPartition

from attribution.engine.processor import BatchResult
from attribution.infra.metrics import Metrics
from attribution.state.cache import UserCache

log = logging.getLogger(__name__)
STAGES = ("parse", "process", "produce", "commit")


def record_batch(m: Metrics, result: BatchResult, n: int, *stamps: float) -> None:
    """Count one batch: ``stamps`` are the perf_counter times at the start and after each stage."""
    for stage, (a, b) in zip(STAGES, pairwise(stamps), strict=True):
        m.batch_seconds.labels(stage).observe(b - a)
    m.batch_seconds.labels("total").observe(stamps[-1] - stamps[0])
    m.batch_size.observe(n)
    for op, seconds in result.redis_seconds.items():
        m.redis_seconds.labels(op).observe(seconds)
    for (topic, outcome), count in result.outcomes.items():
        m.events.labels(topic, outcome).inc(count)
    for d in result.dead_letters:
        m.dlq.labels(d.topic).inc()
    for c in result.conversions:
        m.conversions.labels(c.event, c.basis).inc()
    for event, count in result.amount_missing.items():
        m.amount_missing.labels(event).inc(count)
    m.conflicts.inc(result.conflicts)
    m.recovered.inc(result.recovered)


def record_cache(m: Metrics, cache: UserCache, counted: list[int]) -> None:
    """The cache's size now, and its lookups and evictions since ``counted`` (updated in place)."""
    m.cache_bytes.set(cache.used)
    m.cache_users.set(len(cache.entries))
    now = [cache.hits, cache.misses, cache.evictions]
    hits, misses, evictions = (a - b for a, b in zip(now, counted, strict=True))
    m.cache_lookups.labels("hit").inc(hits)
    m.cache_lookups.labels("miss").inc(misses)
    m.cache_evictions.inc(evictions)
    counted[:] = now


def export_lag(m: Metrics, consumer: Consumer, owned: Iterable[tuple[str, int]]) -> None:
    """Lag from the high watermark librdkafka caches from every fetch: no broker round trip."""
    assigned = [TopicPartition(t, p) for t, p in sorted(owned)]
    if not assigned:
        return
    try:
        positions = consumer.position(assigned)
    except KafkaException as exc:  # lag is best effort: never stop the worker for it
        log.debug("positions unknown: %s", exc)
        return
    for tp in positions:
        try:
            _, high = consumer.get_watermark_offsets(tp, cached=True)
        except KafkaException:
            continue
        if tp.offset >= 0 and high >= 0:
            m.lag.labels(tp.topic, str(tp.partition)).set(max(0, high - tp.offset))


GC_YOUNG_THRESHOLD = 50_000  # CPython's default is 700 allocations
FULL_GC_EVERY_S = 600.0


def tune_gc() -> None:
    """The hot path allocates and frees millions of acyclic objects per minute; the cyclic collector
    only needs to look at what survives. Move everything loaded at start (modules, settings, clients)
    out of its sight, and collect the young generation less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 10, 10)


_PACING = False


def pace_gc() -> None:
    """This process is a worker's own (``attribution worker``, the bench): let ``GcPacer`` freeze.
    Not done where a worker shares its process (tests, embedding): freezing would keep that host's
    cyclic garbage (a finished subprocess, say) until the next full collection."""
    global _PACING  # noqa: PLW0603  # one switch per process
    _PACING = True


class GcPacer:
    """Keeps the cyclic collector off what the worker holds on purpose (once ``pace_gc`` was called).

    The user states held in memory are long-lived containers (lists and dicts inside msgspec
    structs): left to the collector, every one of them is traversed by a young collection, again by
    the middle one (pauses of 100 ms and more were measured), then by every full one. Nothing on the
    hot path forms reference cycles, so after each batch ``settle`` moves every live object to the
    permanent generation (``gc.freeze``, O(1)): collections then only look at what the batch in hand
    allocates. Frozen objects are still freed by reference counting when the cache drops them; only a
    cycle frozen before the collector saw it (an exception's traceback, say) would be kept, so every
    ``FULL_GC_EVERY_S`` the permanent generation is collected once."""

    def __init__(self, full_every_s: float = FULL_GC_EVERY_S) -> None:
        self.full_every_s = full_every_s
        self._next_full = time.monotonic() + full_every_s

    def settle(self) -> None:
        if not _PACING:
            return
        now = time.monotonic()
        if now >= self._next_full:
            gc.unfreeze()
            gc.collect()
            self._next_full = now + self.full_every_s
        gc.freeze()
