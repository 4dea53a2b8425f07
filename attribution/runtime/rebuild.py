"""``attribution rebuild``: replay the retained inputs into a fresh state after Redis lost it.

Steps: refuse while workers are running in the group; delete every key under the Redis prefix; start
a new state generation; replay the inputs from ``earliest`` (every retained record: exact as long
as the topics retain all history) or from ``window`` (now - the longest conversion window - grace:
conversions for goals after that point are exact, but tallies count only the replayed events);
publish tallies; leave the group's offsets at the end so that workers resume from there.
"""

from __future__ import annotations

import logging
import time
import uuid

from confluent_kafka import OFFSET_BEGINNING, KafkaException, TopicPartition

from attribution.contract.topics import INPUTS
from attribution.errors import AttributionError
from attribution.infra.config import Config
from attribution.runtime import kafka_io, settings_sync
from attribution.runtime.worker import Worker
from attribution.state.generation import new_generation
from attribution.state.keys import Keys
from attribution.state.redis_store import RedisStore

log = logging.getLogger(__name__)


def active_members(config: Config) -> int:
    """Members of the worker's consumer group as the broker describes it (0 when it cannot say: the
    rebuild then relies on getting every input partition when it joins the group)."""
    futures = kafka_io.admin(config).describe_consumer_groups([config.group_id], request_timeout=10)
    try:
        group = futures[config.group_id].result(timeout=20)
    except (KafkaException, TimeoutError) as exc:
        log.warning("cannot describe group %s (%s); relying on the assignment", config.group_id, exc)
        return 0
    return len(group.members)


def start_offsets(config: Config, since: str, partitions: int) -> dict[tuple[str, int], int]:
    tps = [(config.topic(kind), p) for kind in INPUTS for p in range(partitions)]
    if since == "earliest":
        return {tp: OFFSET_BEGINNING for tp in tps}
    book = settings_sync.published(config)
    windows = [
        ev.window_ms for project in book.projects() if (s := book.get(project)) for ev in s.conversion_events
    ]
    from_ms = int(time.time() * 1000) - max(windows, default=0) - config.grace_ms
    probe = kafka_io.consumer(config, {"group.id": f"{config.group_id}-rebuild-{uuid.uuid4().hex[:6]}"})
    try:
        found = probe.offsets_for_times([TopicPartition(t, p, from_ms) for t, p in tps], timeout=15)
        out = {}
        for tp in found:
            # -1: no record at or after from_ms: start at the end (nothing of that partition to replay)
            out[(tp.topic, tp.partition)] = (
                tp.offset if tp.offset >= 0 else probe.get_watermark_offsets(tp, timeout=15)[1]
            )
        return out
    finally:
        probe.close()


def rebuild(config: Config, since: str, force: bool = False) -> dict[str, object]:
    partitions = kafka_io.check_copartitioned(config)
    members = active_members(config)
    if members and not force:
        raise AttributionError(
            f"{members} member(s) are in consumer group {config.group_id}: stop every worker first "
            "(or pass --force if they are gone and the group has not expired them yet)"
        )
    offsets = start_offsets(config, since, partitions)
    wiped: dict[str, object] = {}

    def fresh_state() -> str:
        """Runs once the group gave us every input partition: no worker can write any more."""
        store = RedisStore.from_url(
            config.redis_url.get_secret_value(), Keys(config.redis_prefix), config.tally_ttl_ms
        )
        try:
            wiped["deleted_keys"] = store.wipe()
            wiped["generation"] = generation = store.init_generation(new_generation())
        finally:
            store.close()
        log.info(
            "deleted %s keys; state generation %s; replaying from %s",
            wiped["deleted_keys"],
            generation,
            since,
        )
        return generation

    started = time.monotonic()
    worker = Worker(config, start_offsets=offsets, until_end=True, exclusive_start=fresh_state)
    worker.run()
    return {
        **wiped,
        "from": since,
        "batches": worker.batches,
        "seconds": round(time.monotonic() - started, 1),
    }
