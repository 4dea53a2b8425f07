"""Publishing a batch's outputs and committing its input offsets, plainly or in a transaction.

Plain (default): produce, wait until the broker has every record, then commit the offsets. A broker
that is down is waited for (librdkafka retries until ``message.timeout.ms``); a commit that fails
because the partitions moved is dropped: the next owner re-reads the batch, a no-op for state.

``ATTRIBUTION_EXACTLY_ONCE=true``: outputs and offsets in one Kafka transaction, so read_committed
consumers see each output once; a batch that produced nothing commits its offsets plainly. The
state in Redis is fenced either way, so correctness never depends on the broker's transactions.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import msgspec
import orjson
from confluent_kafka import Consumer, KafkaException, TopicPartition

from attribution.engine.processor import BatchResult
from attribution.engine.tally_feed import TallyFeed
from attribution.errors import AttributionError
from attribution.infra.config import Config
from attribution.runtime import kafka_io

log = logging.getLogger(__name__)
COMMIT_RETRY_S = 1.0


class Outputs:
    def __init__(self, config: Config, stopping: Callable[[], bool]) -> None:
        self.config = config
        self.stopping = stopping
        self.errors: list[str] = []
        extra: dict[str, Any] = {"on_delivery": self._on_delivery}
        if config.exactly_once:
            tid = config.transactional_id or f"{socket.gethostname()}-{os.getpid()}"
            extra["transactional.id"] = f"{config.group_id}-{tid}"
        self.producer = kafka_io.producer(config, **extra)
        self.transactional = config.exactly_once
        self.in_transaction = False
        self.produced = 0  # records produced in the open transaction
        if self.transactional:
            self.producer.init_transactions(30)

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.errors.append(f"{msg.topic()}: {err.str()}")

    def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        on_delivery: Callable[[Any, Any], None] | None = None,
    ) -> None:
        extra: dict[str, Any] = {}
        if on_delivery is not None:  # replaces the producer-wide callback for this record: call both

            def both(err: Any, msg: Any) -> None:
                self._on_delivery(err, msg)
                on_delivery(err, msg)

            extra["on_delivery"] = both
        while True:
            try:
                self.producer.produce(topic, key=key, value=value, **extra)
                self.produced += 1
                return
            except BufferError:  # local queue full: let deliveries drain
                self.producer.poll(0.1)

    def begin(self) -> None:
        if self.transactional:
            self.producer.begin_transaction()
            self.in_transaction = True
            self.produced = 0

    def publish_tallies(self, feed: TallyFeed) -> int:
        """Publish the snapshots of the dirty campaigns and subscription records (see TallyFeed);
        returns how many."""
        flushed = False

        def publish(topic: str, key: str, snap: dict[str, Any], on_offset: Callable[[int], None]) -> None:
            def delivered(err: Any, msg: Any) -> None:
                if err is None:
                    on_offset(msg.offset() or 0)

            self.produce(self.config.topic(topic), key.encode(), orjson.dumps(snap), delivered)

        def flush() -> None:
            nonlocal flushed
            self.commit_outputs()
            flushed = True

        self.begin()
        count = feed.publish_dirty(publish, flush)
        if not flushed:
            self.abort()
        return count

    def send_batch(self, result: BatchResult) -> None:
        cfg = self.config
        for c in result.conversions:
            self.produce(cfg.topic("conversions"), c.key.encode(), msgspec.json.encode(c))
        for r in result.identity:  # keyed by the user whose partition takes it in
            self.produce(cfg.topic("identity"), r.to.encode(), msgspec.json.encode(r))
        for d in result.dead_letters:
            self.produce(cfg.topic("dlq"), d.key.encode() if d.key else None, msgspec.json.encode(d))
            log.warning("DLQ %s[%d]@%d: %s", d.topic, d.partition, d.offset, d.error)
        self.producer.poll(0)

    def commit(self, consumer: Consumer, offsets: dict[tuple[str, int], int]) -> None:
        """Make the outputs durable, then the offsets (one transaction in exactly-once mode)."""
        tps = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        if self.transactional and self.produced:
            self.commit_outputs(consumer.consumer_group_metadata, tps)
            return
        if self.transactional:
            # Nothing to keep atomic with the offsets: close the empty transaction, commit them
            # plainly. (A transaction of offsets only is also what the embedded tansu broker drops:
            # it commits them later with the next transaction that carries records, if any.)
            self.commit_outputs()
        self.flush()
        if tps:
            self._commit_offsets(consumer, tps)

    def commit_outputs(
        self, group: Callable[[], Any] | None = None, offsets: list[TopicPartition] | None = None
    ) -> None:
        """Make what was produced durable: flush, or in exactly-once mode commit the transaction
        (with ``offsets`` of the consumer group ``group()`` when given)."""
        if not self.transactional:
            self.flush()
            return
        try:
            if offsets and group is not None:
                self.producer.send_offsets_to_transaction(offsets, group(), 30)
            self.producer.commit_transaction(60)
            self.in_transaction = False
        except KafkaException as exc:
            self.abort()
            raise AttributionError(f"transaction not committed: {exc.args[0].str()}") from None

    def abort(self) -> None:
        if self.in_transaction:
            self.in_transaction = False
            try:
                self.producer.abort_transaction(30)
            except KafkaException as exc:
                log.warning("abort_transaction: %s", exc.args[0].str())

    def flush(self) -> None:
        """Wait until the broker has every record; a delivery error (after librdkafka's own retries,
        ``message.timeout.ms``) stops the worker before any offset is committed."""
        waited = 0.0
        while self.producer.flush(1.0) > 0 and not self.errors:
            waited += 1.0
            if waited % 10 == 0:
                log.warning("outputs still not delivered after %.0f s (broker down?)", waited)
        if self.errors:
            errors, self.errors = self.errors[:5], []
            raise AttributionError(f"outputs not delivered: {errors}")

    def _commit_offsets(self, consumer: Consumer, tps: list[TopicPartition]) -> None:
        while True:
            try:
                consumer.commit(offsets=tps, asynchronous=False)
                return
            except KafkaException as exc:
                err = exc.args[0]
                if not err.retriable() or self.stopping():
                    # partitions moved (or we are stopping): the next owner re-reads from the last
                    # commit, which the state fences make a no-op
                    log.warning("offsets not committed (%s); the batch will be re-read", err.str())
                    return
                log.warning("commit failed (%s); retrying", err.str())
                time.sleep(COMMIT_RETRY_S)
