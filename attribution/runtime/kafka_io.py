"""Kafka plumbing shared by the CLI and the worker: clients, the broker probe, topics.

librdkafka's own log lines (one per failed connection attempt, hundreds a minute while a broker is
down) go to the ``attribution.librdkafka`` logger at DEBUG: the engine reports what matters itself,
in one line that names the setting (``probe``, the worker's outage warnings).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._metadata import ClusterMetadata
from confluent_kafka.cimpl import NewTopic

from attribution.contract.topics import INPUTS, TOPICS
from attribution.errors import AttributionError, BadSettings, MissingTopics, Unavailable
from attribution.infra.config import Config, kafka_env_name

log = logging.getLogger(__name__)
PROBE_S = 5.0  # how long a command waits for the broker before saying it does not answer


_last_error: list[str] = []  # the newest warning librdkafka logged, for the probe's message


class _LibrdkafkaLog:
    """librdkafka's log lines, behind the log level: everything at DEBUG on one logger."""

    def __init__(self) -> None:
        self.logger = logging.getLogger("attribution.librdkafka")

    def log(self, level: int, msg: str, *args: object) -> None:
        self.logger.debug(msg, *args)
        if level >= logging.WARNING:  # the newest says why a broker did not answer (TLS, SASL...)
            # "FAIL [rdkafka#producer-1] [thrd:host:9092/bootstrap]: host:9092/bootstrap: <why>"
            _last_error[:] = [re.sub(r"^.*?\[thrd:[^\]]*\]: \S+: ", "", msg % args if args else msg)]


def _error_cb(err: KafkaError) -> None:
    # transport errors are retried by librdkafka; the worker and the probe report outages themselves
    log.debug("librdkafka: %s", err.str())


_QUIET = {"logger": _LibrdkafkaLog(), "error_cb": _error_cb}

C = TypeVar("C")


def _client(cls: Callable[[dict[str, Any]], C], conf: dict[str, Any]) -> C:
    """Build a client; a configuration librdkafka refuses is a BadSettings naming the KAFKA_* variable."""
    try:
        return cls({**_QUIET, **conf})
    except (KafkaException, ValueError, TypeError) as exc:
        text = str(exc)
        match = re.search(r'property:? "?([a-z0-9._]+)', text)
        raise BadSettings(kafka_env_name(match.group(1)) if match else "KAFKA_*", text) from None


def admin(config: Config) -> AdminClient:
    return _client(AdminClient, config.kafka())


def probe(config: Config, timeout_s: float = PROBE_S) -> ClusterMetadata:
    """The cluster's metadata; Unavailable naming KAFKA_BOOTSTRAP_SERVERS when no broker answers."""
    _last_error.clear()
    client = admin(config)
    try:
        return client.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        client.poll(0.1)  # serves librdkafka's queued log lines: the newest says why
        cause = "; ".join([exc.args[0].str(), *_last_error])
        raise Unavailable(
            f"no Kafka broker answers at KAFKA_BOOTSTRAP_SERVERS={config.kafka_bootstrap_servers} "
            f"within {timeout_s:.0f} s ({cause})"
        ) from None


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
    settings and tallies are compacted. Returns topic -> "created" | "exists" | "exists with N
    partitions, not M" (an existing topic's partition count is never changed)."""
    n = partitions or config.partitions
    metadata = probe(config)
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
    counts = {t.topic: t.num_partitions for t in wanted}
    for topic, status in result.items():
        existing = metadata.topics.get(topic)
        if status == "exists" and existing is not None and len(existing.partitions) != counts[topic]:
            result[topic] = f"exists with {len(existing.partitions)} partitions, not {counts[topic]}"
    return result


def check_copartitioned(config: Config, timeout_s: float = PROBE_S) -> int:
    """The input topics must exist with one partition count; returns it. MissingTopics when one of
    them does not exist, BadSettings when the counts differ."""
    metadata = probe(config, timeout_s)
    counts: dict[str, int] = {}
    missing = []
    for kind in INPUTS:
        topic = metadata.topics.get(config.topic(kind))
        if topic is None or topic.error is not None:
            missing.append(config.topic(kind))
        else:
            counts[config.topic(kind)] = len(topic.partitions)
    if missing:
        raise MissingTopics(
            f"topics {', '.join(missing)} do not exist on the broker at KAFKA_BOOTSTRAP_SERVERS="
            f"{config.kafka_bootstrap_servers}: run `attribution topics create`"
        )
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


def restart_points(
    consumer: Consumer, tps: list[tuple[str, int]], known: Mapping[tuple[str, int], int]
) -> list[TopicPartition]:
    """Where each partition's unprocessed records start: ``known`` (the worker's own last commit,
    or the start offset it was given, such as a rebuild's replay) else the group's committed offset,
    else the beginning."""
    points = {tp: known.get(tp) for tp in tps}
    unknown = [TopicPartition(t, p) for (t, p), o in points.items() if o is None]
    for tp in consumer.committed(unknown, timeout=PROBE_S) if unknown else []:
        points[(tp.topic, tp.partition)] = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
    return [TopicPartition(t, p, o) for (t, p), o in points.items() if o is not None]
