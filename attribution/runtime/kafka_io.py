"""Kafka plumbing shared by the CLI and the worker: clients, topics, the settings feed."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import msgspec
import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from attribution.contract.topics import INPUTS, TOPICS
from attribution.core.rules import ProjectSettings, SettingsBook, parse_settings
from attribution.errors import AttributionError, BadSettings
from attribution.infra.config import Config, kafka_env_name

log = logging.getLogger(__name__)


C = TypeVar("C")


def _client(cls: Callable[[dict[str, Any]], C], conf: dict[str, Any]) -> C:
    """Build a client; a configuration librdkafka refuses is a BadSettings naming the KAFKA_* variable."""
    try:
        return cls(conf)
    except (KafkaException, ValueError, TypeError) as exc:
        text = str(exc)
        match = re.search(r'property:? "?([a-z0-9._]+)', text)
        raise BadSettings(kafka_env_name(match.group(1)) if match else "KAFKA_*", text) from None


def admin(config: Config) -> AdminClient:
    return _client(AdminClient, config.kafka())


#: How long the broker may hold a fetch that has no data yet (librdkafka's default: 500 ms). Kafka
#: answers as soon as data arrives, so this only bounds idle polling there; the embedded tansu
#: broker holds a fetch for the full wait, which then adds to the goal -> tally latency, while a
#: much shorter wait makes it spend its CPU on fetches (measured: 10 ms cut the p99 at 20k/s from
#: ~370 to ~200 ms, but at a steady 2.5k/s for 10 minutes tansu fell behind; 100 ms kept up).
#: KAFKA_FETCH_WAIT_MAX_MS overrides it.
CONSUMER_DEFAULTS = {"fetch.wait.max.ms": 100}


def consumer(config: Config, extra: Mapping[str, Any]) -> Consumer:
    return _client(Consumer, config.kafka(extra, defaults=CONSUMER_DEFAULTS))


def producer(config: Config, **extra: Any) -> Producer:
    """An idempotent producer: retries never duplicate or reorder within a partition."""
    return _client(
        Producer,
        config.kafka(
            {
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "batch.num.messages": 10000,
                "queue.buffering.max.messages": 1_000_000,
                **extra,
            }
        ),
    )


def create_topics(config: Config, partitions: int | None = None, timeout_s: float = 30.0) -> dict[str, str]:
    """Create every topic the engine uses, idempotently: inputs share one partition count (co-partitioning),
    settings and tallies are compacted. Returns topic -> "created" | "exists"."""
    n = partitions or config.partitions
    wanted = []
    for t in TOPICS:
        topic_conf = {"cleanup.policy": "compact"} if t.compacted else {}
        count = 1 if t.single_partition else n
        wanted.append(NewTopic(config.topic(t.name), count, config.replication_factor, config=topic_conf))
    result: dict[str, str] = {}
    client = admin(config)  # must outlive the futures
    for topic, future in client.create_topics(wanted, request_timeout=timeout_s).items():
        try:
            future.result(timeout=timeout_s)
            result[topic] = "created"
        except KafkaException as exc:
            if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
                raise AttributionError(f"cannot create topic {topic}: {exc.args[0].str()}") from None
            result[topic] = "exists"
    return result


def check_copartitioned(config: Config, timeout_s: float = 15.0) -> int:
    """The input topics must exist with one partition count; returns it or raises BadSettings."""
    client = admin(config)
    metadata = client.list_topics(timeout=timeout_s)
    counts: dict[str, int] = {}
    for kind in INPUTS:
        topic = metadata.topics.get(config.topic(kind))
        if topic is None or topic.error is not None:
            raise BadSettings(
                "ATTRIBUTION_TOPIC_PREFIX",
                f"input topic {config.topic(kind)} does not exist (run `attribution topics create`)",
            )
        counts[config.topic(kind)] = len(topic.partitions)
    if len(set(counts.values())) != 1:
        raise BadSettings(
            "topics",
            f"input topics must be co-partitioned (same partition count): {counts}; "
            "a user's sends, clicks and goals must land on the same partition number",
        )
    return next(iter(counts.values()))


def has_committed(consumer: Consumer, config: Config, partitions: int, timeout_s: float = 15.0) -> bool:
    """Whether the consumer group committed an offset on any input partition (it consumed before)."""
    tps = [TopicPartition(config.topic(kind), p) for kind in INPUTS for p in range(partitions)]
    return any(tp.offset >= 0 for tp in consumer.committed(tps, timeout=timeout_s))


class SettingsFeed:
    """Reads the compacted settings topic from the beginning, then follows it; no consumer group."""

    def __init__(self, config: Config, book: SettingsBook) -> None:
        self.config = config
        self.book = book
        self.rejected: list[tuple[int, str]] = []
        self.consumer = consumer(
            config,
            {
                "group.id": f"{config.group_id}-settings-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "enable.partition.eof": True,
            },
        )
        topic = config.topic("settings")
        metadata = self.consumer.list_topics(topic, timeout=15)
        partitions = metadata.topics[topic].partitions if topic in metadata.topics else {}
        if not partitions:
            raise BadSettings("ATTRIBUTION_TOPIC_PREFIX", f"settings topic {topic} does not exist")
        self.consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        self._eof: set[int] = set()
        self._partitions = set(partitions)

    def load_all(self, timeout_s: float = 30.0) -> None:
        """Block until every settings partition has been read to its end once."""
        deadline = time.monotonic() + timeout_s
        while self._eof != self._partitions:
            if time.monotonic() > deadline:
                raise AttributionError(f"settings topic not read to its end within {timeout_s:.0f} s")
            self.poll(0.2)

    def poll(self, timeout_s: float = 0.0) -> list[ProjectSettings]:
        """Apply whatever settings records arrived; returns the ones that changed the book."""
        changed = []
        for msg in self.consumer.consume(1000, timeout_s):
            err = msg.error()
            if err is not None:
                if err.code() == -191:  # _PARTITION_EOF
                    self._eof.add(msg.partition() or 0)
                    continue
                raise AttributionError(f"settings topic: {err.str()}")
            value = msg.value()
            if value is None:
                continue
            try:
                settings = parse_settings(orjson.loads(value), self.config.max_conversion_events)
            except (BadSettings, orjson.JSONDecodeError) as exc:
                self.rejected.append((msg.offset() or 0, str(exc)))
                log.error("settings record at offset %s refused: %s", msg.offset(), exc)
                continue
            if self.book.put(settings):
                changed.append(settings)
        return changed

    def close(self) -> None:
        self.consumer.close()


def put_settings(config: Config, documents: Iterable[ProjectSettings]) -> None:
    """Publish validated settings documents, keyed by project."""
    p = producer(config)
    for doc in documents:
        p.produce(config.topic("settings"), key=doc.project_id.encode(), value=msgspec.json.encode(doc))
    if p.flush(30) != 0:
        raise AttributionError("settings not delivered within 30 s")
