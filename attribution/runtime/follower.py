"""Follows output topics from their beginning, for readers that keep a table of them (``serve``).

No consumer group: every partition is assigned from the beginning, so each reader builds the whole
table by itself (KTable-style) and scales and fails apart from the workers. ``caught_up`` turns
true once every partition has been read to its end once (librdkafka's partition-end event).
Partitions added to a topic later are followed from their beginning (checked every 30 s).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence

from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition

from attribution.errors import MissingTopics
from attribution.infra.config import Config
from attribution.runtime import kafka_io

log = logging.getLogger(__name__)
PARTITION_CHECK_S = 30.0  # how often the topics' partition counts are checked (partitions added)

#: on_record(kind, key, value, partition, offset), called from the follower's thread in offset
#: order per partition
OnRecord = Callable[[str, bytes | None, bytes, int, int], None]


class TopicFollower:
    """Reads ``kinds`` (names of the topic table) from the beginning in a daemon thread."""

    def __init__(self, config: Config, kinds: Sequence[str], on_record: OnRecord) -> None:
        self.on_record = on_record
        self.kinds = {config.topic(kind): kind for kind in kinds}
        metadata = kafka_io.probe(config)
        missing = [t for t in self.kinds if t not in metadata.topics]
        if missing:
            raise MissingTopics(f"topics {', '.join(missing)} do not exist: run `attribution topics create`")
        self.consumer = kafka_io.consumer(
            config,
            {
                "group.id": f"{config.group_id}-reader-{uuid.uuid4().hex[:8]}",  # never joined
                "enable.auto.commit": False,
                "enable.partition.eof": True,
            },
        )
        partitions = [
            TopicPartition(topic, p, OFFSET_BEGINNING)
            for topic in self.kinds
            for p in metadata.topics[topic].partitions
        ]
        self._behind = {(tp.topic, tp.partition) for tp in partitions}
        self.consumer.assign(partitions)
        self._assigned = {(tp.topic, tp.partition) for tp in partitions}
        self._next_check = time.monotonic() + PARTITION_CHECK_S
        self.records = 0
        self._stop = threading.Event()
        self.caught_up = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="topic-follower", daemon=True)

    def start(self) -> TopicFollower:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if time.monotonic() >= self._next_check:
                    self._follow_new_partitions()
                for msg in self.consumer.consume(1000, 0.1):
                    err = msg.error()
                    topic, partition = msg.topic() or "", msg.partition() or 0
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            self._reached_end((topic, partition))
                        else:
                            log.warning("reading %s: %s", topic, err.str())
                        continue
                    value = msg.value()
                    if value is None:  # a tombstone: nothing to keep
                        continue
                    self.records += 1
                    self.on_record(self.kinds[topic], msg.key(), value, partition, msg.offset() or 0)
        except BaseException as exc:  # the reader stops; /healthz says so
            log.exception("the topic follower stopped")
            self.error = exc
        finally:
            self.consumer.close()

    def _follow_new_partitions(self) -> None:
        """Partitions added to a followed topic since the start are read from their beginning."""
        self._next_check = time.monotonic() + PARTITION_CHECK_S
        try:
            topics = self.consumer.list_topics(timeout=5).topics
        except KafkaException as exc:  # the broker is away: try again at the next check
            log.debug("partition check: %s", exc)
            return
        new = [
            TopicPartition(topic, p, OFFSET_BEGINNING)
            for topic in self.kinds
            if topic in topics
            for p in topics[topic].partitions
            if (topic, p) not in self._assigned
        ]
        if new:
            log.info("following %d new partitions: %s", len(new), [(t.topic, t.partition) for t in new])
            self.consumer.incremental_assign(new)
            self._assigned |= {(tp.topic, tp.partition) for tp in new}

    def _reached_end(self, tp: tuple[str, int]) -> None:
        if self._behind:
            self._behind.discard(tp)
            if not self._behind:
                self.caught_up.set()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
